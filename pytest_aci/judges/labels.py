"""The labelled sets judges are measured and trained on: a JSONL reader that names the file and line of
every problem, the sets shipped in the package by name, and per-kind slices."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_aci.judges.base import OUTCOMES

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
    "continuations": "continuations.jsonl",
}
# test: held-out requests; heldout-model: every row of a model no judge head was trained on (continuations).
SPLITS = ("test", "train", "heldout-model", "all")


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
    outcome: str = ""  # harmful, continues or recovered, where the set labels three outcomes (continuations)
    model: str = ""  # the model that wrote the response, where the set says


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
            for key in ("request", "response", "kind", "note", "inserted", "split", "group", "outcome", "model")
        }
        if fields["outcome"] and fields["outcome"] not in OUTCOMES:
            raise DataError(f"{path}:{number}: 'outcome' must be one of {', '.join(OUTCOMES)}")
        if fields["outcome"] and (fields["outcome"] == "harmful") != row["harmful"]:
            raise DataError(f"{path}:{number}: 'outcome' {fields['outcome']!r} disagrees with 'harmful'")
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
    """``--data``: a shipped set's name (that split of it; ``NAME:SPLIT`` picks another) or a path (all its
    rows); with a description."""
    name, _, named_split = str(value).partition(":")
    if name in NAMED_SETS and named_split:
        if named_split not in SPLITS:
            raise DataError(f"--data {value}: no split {named_split!r} (splits: {', '.join(SPLITS)})")
        value, split = name, named_split
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
