"""Files: written atomically (never half-written, whatever stops the process) and JSONL read line by line.

Every artifact pytest-aci writes goes through ``write_atomic`` or ``atomic_target``: the data goes to a
temporary file beside the target, is flushed to disk, and is renamed over it. Every JSONL it reads
goes through ``read_jsonl``: strict (a bad line is an error naming the file and line) or lenient (a bad
line is skipped with a warning that names it, as a crash can leave a truncated last line).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` atomically."""
    with atomic_target(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def write_json(path: Path, data: Any, indent: int = 2) -> None:
    write_atomic(path, json.dumps(data, indent=indent, default=str) + "\n")


class JsonlError(ValueError):
    """A line of a JSONL file that is not what the reader expects; the message names the file and line."""


def read_jsonl(path: Path, parse: Callable[[str], T] = json.loads, *, strict: bool = True) -> tuple[list[T], list[str]]:
    """(items, warnings): ``parse`` of every non-empty line.

    Strict: the first line ``parse`` rejects (any ``ValueError``, which includes pydantic's and
    ``json``'s) or that is not UTF-8 raises ``JsonlError`` naming ``path:line``. Lenient: such lines are
    skipped, one warning each. ``OSError`` (a missing file …) is left to the caller.
    """
    items: list[T] = []
    warnings: list[str] = []
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            truncated = ", truncated last line" if not raw.endswith(b"\n") else ""
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"not UTF-8 (byte {exc.start})"
            else:
                if not line.strip():
                    continue
                try:
                    items.append(parse(line))
                    continue
                except ValueError as exc:
                    problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if strict:
                raise JsonlError(f"{path}:{number}: {problem}{truncated}")
            warnings.append(f"{path}:{number}: skipped, {problem}{truncated}")
    return items, warnings
