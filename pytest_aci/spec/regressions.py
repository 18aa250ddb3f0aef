"""Regression suites: every minimal failing case, kept next to its spec and replayed first on every run.

``advbench.aci.yaml`` keeps its cases in ``advbench.regressions.yaml``: human-readable YAML, merged
without duplicates, written atomically under a file lock (xdist workers and parallel jobs share it).
A ``recovers`` case replays as an explicit Hypothesis example, ahead of the search (the YAML
analogue of ``@example``); it keeps running after the model is fixed, so a regression shows at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pytest_aci.files import write_atomic
from pytest_aci.reporting.jsonl import CaseRecord
from pytest_aci.spec.loading import line_of, read_yaml
from pytest_aci.spec.schema import SPEC_SUFFIXES, Check, SpecError
from pytest_aci.types import InsertionCase

HEADER = """\
# pytest-aci regression cases for {spec}: every minimal failing case found so far.
# They run first, as explicit examples, on every run (written by --aci-save-failures).
# position is the token k of the model's own answer R where the span was inserted; delete an
# entry to forget it.
"""


class RegressionCase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: Annotated[str, Field(min_length=1)]
    check: Check
    position: Annotated[int, Field(ge=0)] | None = None
    span_index: Annotated[int, Field(ge=0)] | None = None
    span_tokens: Annotated[int, Field(ge=1)] | None = None
    lead: Annotated[int, Field(ge=0)] | None = None  # a composed span: which span_leads fragment went first
    span: str | None = None  # for people; left out of redacted runs
    response_len: int | None = None
    model: str | None = None
    seed: int | None = None
    found: str | None = None  # ISO date

    @property
    def key(self) -> tuple:
        return (self.prompt, self.check, self.position, self.span_index, self.span_tokens, self.lead)

    @classmethod
    def from_record(cls, record: CaseRecord, *, redacted: bool) -> RegressionCase:
        insertion = record.check == "recovers"
        return cls(
            prompt=record.prompt_id,
            check=record.check,  # type: ignore[arg-type]
            position=record.position if insertion else None,
            span_index=record.span_index if insertion else None,
            span_tokens=record.span_tokens if insertion else None,
            lead=record.lead if insertion else None,
            span=None if redacted or not insertion else record.span,
            response_len=record.response_len if insertion else None,
            model=record.model,
            seed=record.seed,
            found=date.today().isoformat(),
        )


class RegressionFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cases: list[RegressionCase] = Field(default_factory=list)


def regression_path(spec_path: Path) -> Path:
    """``dir/name.aci.yaml`` → ``dir/name.regressions.yaml`` (not itself a spec, so not collected)."""
    name = spec_path.name
    for suffix in SPEC_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return spec_path.with_name(name + ".regressions.yaml")


def load_regressions(spec_path: Path) -> list[RegressionCase]:
    """The saved cases of a spec (none if there is no file); a broken file is a ``SpecError`` with its line."""
    path = regression_path(spec_path)
    if not path.exists():
        return []
    root, raw = read_yaml(path, "regression file")
    try:
        return RegressionFile.model_validate(raw or {}).cases
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(p) for p in error["loc"])
        raise SpecError(path, line_of(root, error["loc"]) if root else None, f"{loc}: {error['msg']}") from None


def save_regressions(spec_path: Path, new_cases: Iterable[RegressionCase]) -> int:
    """Merge ``new_cases`` into the spec's regression file; returns how many were new."""
    from filelock import FileLock

    path = regression_path(spec_path)
    with FileLock(str(path) + ".lock"):
        cases = load_regressions(spec_path)
        known = {case.key for case in cases}
        added = []
        for case in new_cases:
            if case.key not in known:
                known.add(case.key)
                added.append(case)
        if not added:
            return 0
        cases += added
        cases.sort(key=lambda c: (c.prompt, c.check, c.position or 0, c.span_index or 0, c.span_tokens or 0))
        body = yaml.safe_dump(
            {"cases": [c.model_dump(exclude_none=True) for c in cases]}, sort_keys=False, allow_unicode=True, width=100
        )
        write_atomic(path, HEADER.format(spec=spec_path.name) + body)
    return len(added)


def fit_regressions(
    regressions: Sequence[RegressionCase], span_leads: Sequence[str], spans: list, response_len: int, tokenizer: Any
) -> list[InsertionCase]:
    """An item's saved failing insertions, fitted to the current model's answer and spans (as explicit examples)."""
    leads = [lead.strip() for lead in span_leads]
    cases = []
    for saved in regressions:
        index, lead, length = saved.span_index, -1, saved.span_tokens or 1
        if saved.lead is not None:  # a composed span, saved as such: no text to parse (works redacted)
            if saved.lead >= len(leads):
                continue
            lead = saved.lead
        elif saved.span is not None:  # the saved text wins: the spec's span list may have changed
            text = saved.span.strip()
            if index is None or index >= len(spans) or not spans[index].text.startswith(text):
                index = next((i for i, s in enumerate(spans) if s.text.startswith(text)), None)
            if index is None:  # a span a targeted search composed: a lead fragment, then a pool span
                lead = next((i for i, t in enumerate(leads) if text.startswith(t + " ")), -1)
                body = text[len(leads[lead]) + 1 :] if lead >= 0 else ""
                index = next((i for i, s in enumerate(spans) if body and s.text.startswith(body)), None)
                length = len(tokenizer.encode(" " + body, add_special_tokens=False))
        if index is None or index >= len(spans) or saved.position is None:
            continue
        length = min(length, spans[index].max_tokens)
        position = min(saved.position, response_len)
        cases.append(InsertionCase(position=position, span_index=index, span_tokens=length, lead=lead))
    return list(dict.fromkeys(cases))
