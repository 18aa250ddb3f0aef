"""``aci judge-eval``: how far each judge can be trusted, measured on a labelled set of responses."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_aci.judges import Judge, JudgeInput, Verdict

KINDS = ("refusal", "harmful_compliance", "partial_compliance", "refusal_then_comply", "comply_then_refusal", "benign")
KIND_HEADERS = {
    "refusal": "refusal",
    "harmful_compliance": "comply",
    "partial_compliance": "partial",
    "refusal_then_comply": "refuse→comply",
    "comply_then_refusal": "comply→refuse",
    "benign": "benign",
}
DATA_NAME = Path("fixtures") / "judge_eval.jsonl"


class DataError(ValueError):
    """A labelled set that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    id: str
    request: str
    response: str
    harmful: bool
    kind: str
    note: str = ""


def load_examples(path: Path) -> list[Example]:
    """Read the labelled JSONL; every problem is a ``DataError`` naming the file and line."""
    examples, seen = [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: not a JSON object")
        missing = [k for k in ("id", "request", "response", "harmful", "kind") if k not in row]
        if missing:
            raise DataError(f"{path}:{number}: missing {', '.join(missing)}")
        if not isinstance(row["harmful"], bool):
            raise DataError(f"{path}:{number}: 'harmful' must be true or false")
        if row["kind"] not in KINDS:
            raise DataError(f"{path}:{number}: kind {row['kind']!r} is not one of {', '.join(KINDS)}")
        if row["id"] in seen:
            raise DataError(f"{path}:{number}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        text = {key: str(row[key]) for key in ("id", "request", "response")}
        examples.append(Example(**text, harmful=row["harmful"], kind=row["kind"], note=str(row.get("note", ""))))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


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


@dataclass
class JudgeScore:
    """A judge against the labels. A judge error counts as a 'harmful' answer (it never passes a check)."""

    judge: str
    n: int = 0
    correct: int = 0
    positives: int = 0  # labelled harmful
    negatives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    errors: int = 0
    kinds: dict[str, list[int]] = field(default_factory=dict)  # kind -> [correct, total]

    def add(self, example: Example, verdict: Verdict) -> None:
        said = verdict.harmful or verdict.error
        right = said == example.harmful
        self.n += 1
        self.correct += right
        self.errors += verdict.error
        if example.harmful:
            self.positives += 1
            self.false_negatives += not said
        else:
            self.negatives += 1
            self.false_positives += said
        counts = self.kinds.setdefault(example.kind, [0, 0])
        counts[0] += right
        counts[1] += 1

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    @property
    def false_positive_rate(self) -> float | None:
        return self.false_positives / self.negatives if self.negatives else None

    @property
    def false_negative_rate(self) -> float | None:
        return self.false_negatives / self.positives if self.positives else None

    def kind_accuracy(self, kind: str) -> float | None:
        correct, total = self.kinds.get(kind, (0, 0))
        return correct / total if total else None


def evaluate(judge: Judge, examples: Sequence[Example]) -> tuple[JudgeScore, list[Verdict]]:
    """One ``judge()`` call for the whole set (one judge-model batch)."""
    verdicts = judge.judge([JudgeInput(request=e.request, response=e.response) for e in examples])
    score = JudgeScore(judge.name)
    for example, verdict in zip(examples, verdicts):
        score.add(example, verdict)
    return score, verdicts


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def format_table(scores: Sequence[JudgeScore]) -> list[str]:
    """A Markdown table: one row per judge; per-kind columns are accuracies."""
    kinds = [k for k in KINDS if any(k in s.kinds for s in scores)]
    header = ["judge", "n", "accuracy", "FPR", "FNR", "judge errors", *(KIND_HEADERS[k] for k in kinds)]
    rows = [
        [
            s.judge,
            str(s.n),
            _percent(s.accuracy),
            _percent(s.false_positive_rate),
            _percent(s.false_negative_rate),
            str(s.errors),
            *(_percent(s.kind_accuracy(k)) for k in kinds),
        ]
        for s in scores
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return [line(header), rule, *(line(row) for row in rows)]


def default_data() -> Path:
    """``fixtures/judge_eval.jsonl`` in the working directory, else in the source checkout."""
    here = Path.cwd() / DATA_NAME
    return here if here.is_file() else Path(__file__).resolve().parent.parent / DATA_NAME


def judge_eval_main(args: argparse.Namespace) -> int:
    from pytest_aci.backends import BackendError
    from pytest_aci.judges import (
        MODEL_JUDGES,
        JudgeConfigError,
        JudgeModel,
        UnknownJudge,
        judge_names,
        make_judge,
    )

    data = args.data or default_data()
    try:
        examples = per_kind_slice(load_examples(data), args.per_kind)
        names = judge_names(args.judges)
    except (DataError, UnknownJudge) as exc:
        print(f"aci judge-eval: {exc}", file=sys.stderr)
        return 2
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        print(f"aci judge-eval: --threshold {args.threshold}: expected a fraction between 0 and 1", file=sys.stderr)
        return 2
    model = JudgeModel(args.judge_model, backend=args.backend)
    options = {
        "harmful_markers": args.harmful_marker,
        "threshold": args.threshold,
        "judge_model": model,
    }
    runs = list(names)
    if args.ensemble and len(names) > 1:
        runs.append(",".join(names))
    scores, details = [], []
    try:
        for name in runs:
            judge = make_judge(name, mode=args.ensemble or "majority", **options)
            score, verdicts = evaluate(judge, examples)
            scores.append(score)
            details += [
                {"judge": judge.name, "id": e.id, "kind": e.kind, "label": e.harmful, **v.model_dump()}
                for e, v in zip(examples, verdicts)
            ]
    except (JudgeConfigError, BackendError) as exc:
        print(f"aci judge-eval: {exc}", file=sys.stderr)
        return 2
    finally:
        model.close()
    used_model = bool(MODEL_JUDGES & set(names))
    backend = model.resolved_backend or args.backend
    print(
        f"judge-eval: {len(examples)} labelled examples from {data}"
        + (f"; judge model {args.judge_model} ({backend} backend)" if used_model else "")
    )
    print("\n".join(format_table(scores)))
    print(
        "accuracy, per kind: share of examples judged as labelled. FPR: harmless judged harmful; "
        "FNR: harmful judged harmless. A judge error counts as 'harmful'."
    )
    if args.out:
        try:
            args.out.write_text("".join(json.dumps(d) + "\n" for d in details), encoding="utf-8")
        except OSError as exc:
            print(f"aci judge-eval: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.out}")
    return 0
