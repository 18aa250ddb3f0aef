"""Loading a spec file: YAML with line numbers, so that every problem is one line naming file and line."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pytest_aci.files import read_jsonl
from pytest_aci.spec.schema import INSERTION_CHECKS, LoadedPrompt, LoadedSpec, PromptFile, Spec, SpecError, cell_text

# --- YAML with line numbers -------------------------------------------------------------


def _node_for(node: yaml.Node, loc: tuple[int | str, ...]) -> yaml.Node:
    """The deepest YAML node along a pydantic error location."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == part), None)
            if found is None:
                key = next((k for k, _ in node.value if k.value == part), None)
                return key or node
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return node


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"] if not _is_union_tag(p))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{loc}: {message}" if loc else message


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part.startswith(("list[", "function-")) or part == "PromptFile")


def _pick_error(errors: list[dict[str, Any]], raw: Any) -> dict[str, Any]:
    """For ``prompts`` (list or file) report the error of the form the user wrote."""
    wrote_file = isinstance(raw, dict) and isinstance(raw.get("prompts"), dict)
    for error in errors:
        loc = error["loc"]
        if len(loc) > 1 and loc[0] == "prompts" and str(loc[1]).startswith("list[") == wrote_file:
            continue
        return error
    return errors[0]


def read_yaml(path: Path, what: str = "spec") -> tuple[yaml.Node | None, Any]:
    """A YAML file as its node tree (for line numbers) and its data; a ``SpecError`` naming the line if not."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(path, None, f"cannot read {what}: {exc}") from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        context_mark = getattr(exc, "context_mark", None)
        if mark is not None and context_mark is not None and mark.line >= text.count("\n"):
            mark = context_mark  # e.g. an unclosed quote: point at where it opened, not at the end
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(path, mark.line + 1 if mark else None, f"invalid YAML: {problem}") from None


def line_of(root: yaml.Node, loc: tuple[int | str, ...]) -> int:
    """The line of the YAML node along a pydantic error location (1-based)."""
    return _node_for(root, loc).start_mark.line + 1


def load_spec(path: Path) -> LoadedSpec:
    """Parse and validate one spec file; every problem is a ``SpecError`` naming file and line."""
    root, raw = read_yaml(path)
    if not isinstance(raw, dict) or root is None:
        raise SpecError(path, 1, "a spec must be a YAML mapping (name:, prompts:, checks:, …)")
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        error = _pick_error(exc.errors(), raw)
        loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
        raise SpecError(path, line_of(root, loc), _describe(error)) from None
    if spec.judge and "markers" in spec.judge.replace(" ", "").split(",") and not spec.harmful_markers:
        message = "judge: 'markers' needs harmful_markers: (regexes for harmful content)"
        raise SpecError(path, line_of(root, ("judge",)), message)
    if isinstance(spec.prompts, PromptFile):
        prompts = _read_prompt_file(path, spec, line_of(root, ("prompts",)))
    else:
        prompts = tuple(
            LoadedPrompt(
                id=p.id or f"{i:03d}",
                text=p.text,
                span=p.span,
                line=line_of(root, ("prompts", i)),
                system=p.system or spec.system,
                history=tuple(spec.history if p.history is None else p.history),
            )
            for i, p in enumerate(spec.prompts)
        )
    seen: dict[str, int | None] = {}
    for prompt in prompts:
        if prompt.id in seen:
            raise SpecError(path, prompt.line, f"prompts: duplicate prompt id {prompt.id!r}")
        seen[prompt.id] = prompt.line
    if INSERTION_CHECKS & set(spec.checks) and not spec.spans.text and not spec.spans.made_by_model:
        for prompt in prompts:
            if not prompt.span:
                raise SpecError(
                    path,
                    prompt.line,
                    f"prompt {prompt.id!r} has no harmful span for check 'recovers' (add 'spans:' or a span column)",
                )
    return LoadedSpec(path=path, spec=spec, prompts=prompts, line=root.start_mark.line + 1)


def _read_prompt_file(spec_path: Path, spec: Spec, line: int) -> tuple[LoadedPrompt, ...]:
    source = spec.prompts
    assert isinstance(source, PromptFile)
    data_path = (spec_path.parent / source.file).resolve()
    if not data_path.is_file():
        raise SpecError(spec_path, line, f"prompts.file: no such file {source.file!r} (looked in {data_path.parent})")
    rows = _read_rows(spec_path, line, data_path)
    columns = [source.text_column, source.span_column, source.id_column, *source.where]
    available = set().union(*(row.keys() for row in rows)) if rows else set()
    for column in filter(None, columns):
        if column not in available:
            raise SpecError(
                spec_path,
                line,
                f"prompts: column {column!r} not in {source.file} (columns: {', '.join(sorted(available))})",
            )
    selected = [
        (number, row)
        for number, row in enumerate(rows)
        if all(k in row and cell_text(row[k]) == v for k, v in source.where.items())
    ]
    end = None if source.limit is None else source.offset + source.limit
    selected = selected[source.offset : end]
    if not selected:
        raise SpecError(spec_path, line, f"prompts: no prompts selected from {source.file}")
    prompts = []
    for number, row in selected:
        text = str(row.get(source.text_column) or "").strip()
        if not text:
            raise SpecError(
                spec_path, line, f"prompts: {source.file} row {number + 1} has an empty {source.text_column!r}"
            )
        span = str(row.get(source.span_column) or "").strip() if source.span_column else None
        raw_id = str(row.get(source.id_column) or "") if source.id_column else ""
        prompt_id = re.sub(r"[\s\[\]:]+", "_", raw_id.strip()) or f"{spec.name}-{number:03d}"
        prompts.append(
            LoadedPrompt(
                id=prompt_id, text=text, span=span or None, line=line, system=spec.system, history=tuple(spec.history)
            )
        )
    return tuple(prompts)


def _json_object(line: str) -> dict[str, Any]:
    row = json.loads(line)
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    return row


def _read_rows(spec_path: Path, line: int, data_path: Path) -> list[dict[str, Any]]:
    try:
        if data_path.suffix == ".jsonl":
            return read_jsonl(data_path, _json_object)[0]
        with data_path.open(encoding="utf-8", newline="") as handle:
            if data_path.suffix in (".csv", ".tsv"):
                return list(csv.DictReader(handle, delimiter="\t" if data_path.suffix == ".tsv" else ","))
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise SpecError(spec_path, line, f"prompts.file: cannot read {data_path.name}: {exc}") from None
    raise SpecError(spec_path, line, f"prompts.file: {data_path.name}: use a .csv, .tsv or .jsonl file")
