"""The labelled sets judges are measured and trained on: a JSONL reader that names the file and line of
every problem, the sets shipped in the package by name, and per-kind slices."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

KIND_HEADERS = {  # the kinds of the project set (PROJECT_SET.md)
    "refusal": "refusal",
    "harmful_compliance": "comply",
    "partial_compliance": "partial",
    "refusal_then_comply": "refuse→comply",
    "comply_then_refusal": "comply→refuse",
    "benign": "benign",
}
KINDS = tuple(KIND_HEADERS)
LABELS_DIR = "data/judge_labels"
# Named labelled sets shipped in the package (``--data NAME``); see ``pytest_aci/data/judge_labels/README.md``.
NAMED_SETS = {
    "project": "project.jsonl",
    "harmbench-val": "harmbench_val.jsonl",
    "xstest": "xstest_v2.jsonl",
    "insertion": "insertion.jsonl",
}
SPLITS = ("test", "train", "all")


class DataError(ValueError):
    """A labelled set that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    id: str
    request: str
    response: str
    harmful: bool
    kind: str = ""
    note: str = ""
    inserted: str = ""  # the attacker's span before the response, for insertion continuations
    split: str = ""  # train/test of the shipped sets (grouped by behaviour or prompt)
    group: str = ""  # the behaviour or prompt, so that per-group splits stay apart


def _text_field(row: dict, key: str, path: Path, number: int, required: bool = True) -> str:
    if key not in row:
        if required:
            raise DataError(f"{path}:{number}: missing {key}")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{path}:{number}: {key!r} must be a string")
    return value


def load_examples(path: Path) -> list[Example]:
    """Read a labelled JSONL (``id``, ``request``, ``response``, ``harmful``; optional ``kind``, ``inserted``,
    ``split``, ``group``, ``note``). Every problem is a ``DataError`` naming the file and line."""
    examples, seen = [], set()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    for number, line_bytes in enumerate(raw.splitlines(), start=1):
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{number}: not UTF-8 (byte {exc.start})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: not a JSON object")
        missing = [k for k in ("request", "response", "harmful") if k not in row]
        if missing:
            raise DataError(f"{path}:{number}: missing {', '.join(missing)}")
        if not isinstance(row["harmful"], bool):
            raise DataError(f"{path}:{number}: 'harmful' must be true or false")
        ident = str(row.get("id", f"line-{number}"))
        if ident in seen:
            raise DataError(f"{path}:{number}: duplicate id {ident!r}")
        seen.add(ident)
        fields = {
            key: _text_field(row, key, path, number, required=key in ("request", "response"))
            for key in ("request", "response", "kind", "note", "inserted", "split", "group")
        }
        examples.append(Example(id=ident, harmful=row["harmful"], **fields))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def named_path(name: str) -> Path:
    from importlib import resources

    return Path(str(resources.files("pytest_aci").joinpath(f"{LABELS_DIR}/{NAMED_SETS[name]}")))


def load_named(name: str, split: str = "test") -> list[Example]:
    """A shipped labelled set by name, one split of it (``test``: rows the classifier never trained on)."""
    examples = load_examples(named_path(name))
    return examples if split == "all" else [e for e in examples if e.split in (split, "")]


def load_data(value: str | Path, split: str = "test") -> tuple[list[Example], str]:
    """``--data``: a shipped set's name (that split of it) or a path (all its rows); with a description."""
    if str(value) in NAMED_SETS:
        examples = load_named(str(value), split)
        if not examples:
            raise DataError(f"labelled set {value!r} has no rows in split {split!r}")
        has_splits = any(e.split for e in examples)
        return examples, f"{value} ({split} split)" if has_splits else str(value)
    return load_examples(Path(value)), str(value)


def per_kind_slice(examples: Sequence[Example], per_kind: int | None) -> list[Example]:
    """The first ``per_kind`` examples of each kind, in file order (all of them when None)."""
    if per_kind is None:
        return list(examples)
    taken: dict[str, int] = {}
    chosen = []
    for example in examples:
        if taken.get(example.kind, 0) < per_kind:
            taken[example.kind] = taken.get(example.kind, 0) + 1
            chosen.append(example)
    return chosen
