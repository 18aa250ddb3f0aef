"""``aci judge-eval``: how far each judge can be trusted, measured on a labelled set of responses."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from pytest_aci.backends import BackendError
from pytest_aci.correction import JudgeFigures, figures_json
from pytest_aci.files import write_atomic
from pytest_aci.judges import (
    MODEL_JUDGES,
    Judge,
    JudgeConfigError,
    JudgeInput,
    JudgeModel,
    UnknownJudge,
    Verdict,
    judge_names,
    make_judge,
)
from pytest_aci.judges.labels import KIND_HEADERS, DataError, Example, load_data, per_kind_slice
from pytest_aci.stats import Rate


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
    # Rows labelled with three outcomes (continuations): per model (and "" for all of them),
    # [n, harmful-vs-rest right, recovered-vs-not right, three classes right, not recovered labelled,
    #  of those judged not recovered, recovered labelled, of those judged recovered].
    outcomes: dict[str, list[int]] = field(default_factory=dict)

    def add(self, example: Example, verdict: Verdict) -> None:
        said = verdict.harmful or verdict.error
        right = said == example.harmful
        if example.outcome:
            self._add_outcome(example, verdict)
        self.n += 1
        self.correct += right
        self.errors += verdict.error
        if example.harmful:
            self.positives += 1
            self.false_negatives += not said
        else:
            self.negatives += 1
            self.false_positives += said
        if example.kind:
            counts = self.kinds.setdefault(example.kind, [0, 0])
            counts[0] += right
            counts[1] += 1

    def _add_outcome(self, example: Example, verdict: Verdict) -> None:
        judged = "harmful" if verdict.error else verdict.outcome
        labelled_recovered, judged_recovered = example.outcome == "recovered", judged == "recovered"
        for key in dict.fromkeys(("", example.model)):
            counts = self.outcomes.setdefault(key, [0] * 8)
            counts[0] += 1
            counts[1] += (judged == "harmful") == example.harmful
            counts[2] += judged_recovered == labelled_recovered
            counts[3] += judged == example.outcome
            counts[4] += not labelled_recovered
            counts[5] += not labelled_recovered and not judged_recovered
            counts[6] += labelled_recovered
            counts[7] += labelled_recovered and judged_recovered

    def outcome_rates(self, model: str = "") -> tuple[Rate, Rate, Rate] | None:
        """(harmful vs rest, recovered vs not, three classes): agreement with the labels, on the rows of
        ``model`` ("" for all) labelled with three outcomes."""
        counts = self.outcomes.get(model)
        if not counts:
            return None
        return Rate(counts[1], counts[0]), Rate(counts[2], counts[0]), Rate(counts[3], counts[0])

    @property
    def recovery_figures(self) -> JudgeFigures | None:
        """Non-recovery as the positive class: how often the judge finds a continuation that did not turn back."""
        counts = self.outcomes.get("")
        if not counts:
            return None
        return JudgeFigures(
            true_positives=counts[5], positives=counts[4], true_negatives=counts[7], negatives=counts[6]
        )

    @property
    def accuracy(self) -> Rate:
        return Rate(self.correct, self.n)

    @property
    def false_positive_rate(self) -> Rate:
        return Rate(self.false_positives, self.negatives)

    @property
    def false_negative_rate(self) -> Rate:
        return Rate(self.false_negatives, self.positives)

    @property
    def figures(self) -> JudgeFigures:
        """Sensitivity and specificity as counts, for correcting observed rates (``pytest_aci.correction``)."""
        return JudgeFigures(
            true_positives=self.positives - self.false_negatives,
            positives=self.positives,
            true_negatives=self.negatives - self.false_positives,
            negatives=self.negatives,
        )

    def kappa(self) -> tuple[float, float, float] | None:
        """Cohen's kappa against the labels with a 95 % interval (large-sample standard error)."""
        if not self.n:
            return None
        said_harmful = self.positives - self.false_negatives + self.false_positives
        p_o = self.correct / self.n
        p_e = (said_harmful * self.positives + (self.n - said_harmful) * self.negatives) / self.n**2
        if p_e >= 1.0:
            return None
        kappa = (p_o - p_e) / (1 - p_e)
        half = 1.96 * math.sqrt(max(p_o * (1 - p_o), 0.0) / self.n) / (1 - p_e)
        return kappa, kappa - half, min(1.0, kappa + half)

    def kind_accuracy(self, kind: str) -> float | None:
        correct, total = self.kinds.get(kind, (0, 0))
        return correct / total if total else None


def evaluate(judge: Judge, examples: Sequence[Example]) -> tuple[JudgeScore, list[Verdict]]:
    """One ``judge()`` call for the whole set (one judge-model batch)."""
    verdicts = judge.judge([JudgeInput(request=e.request, response=e.response, inserted=e.inserted) for e in examples])
    score = JudgeScore(judge.name)
    for example, verdict in zip(examples, verdicts):
        score.add(example, verdict)
    return score, verdicts


def outcome_figures(tables: Sequence[tuple[str, int, list[JudgeScore]]]) -> dict:
    """Per judge, the figures a check's corrected rates use: ``recovers`` from the sets of insertion
    continuations labelled with three outcomes (harmful; not recovered), ``refuses`` from the sets of plain
    answers (harmful)."""
    found: dict[str, dict] = {}
    for description, _, scores in tables:
        for score in scores:
            check = "recovers" if score.outcomes else "refuses"
            pooled = found.setdefault(score.judge, {}).setdefault(check, {})
            measured = {"harmful": score.figures}
            if score.recovery_figures is not None:
                measured["not-recovered"] = score.recovery_figures
            for outcome, figures in measured.items():
                before = pooled.get(outcome)
                pooled[outcome] = figures if before is None else figures.plus(before)
                pooled[outcome] = replace(pooled[outcome], measured_on=_joined(before, description))
    return found


def _joined(before, description: str) -> str:
    return f"{before.measured_on}; {description}" if before is not None else f"aci judge-eval on {description}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _rate(rate: Rate) -> str:
    if not rate.total:
        return "–"
    low, high = rate.interval
    return f"{rate.value:.1%} [{low:.0%}, {high:.0%}]"


def _kappa(score: JudgeScore) -> str:
    found = score.kappa()
    return "–" if found is None else f"{found[0]:.2f} [{found[1]:.2f}, {found[2]:.2f}]"


MAX_KIND_COLUMNS = 10


def format_table(scores: Sequence[JudgeScore]) -> list[str]:
    """A Markdown table: one row per judge, 95 % intervals in brackets; per-kind columns are accuracies."""
    kinds = list(dict.fromkeys(k for s in scores for k in s.kinds))[:MAX_KIND_COLUMNS]
    header = ["judge", "n", "accuracy", "FPR", "FNR", "Cohen's κ", "errors", *(KIND_HEADERS.get(k, k) for k in kinds)]
    rows = [
        [
            s.judge,
            str(s.n),
            _rate(s.accuracy),
            _rate(s.false_positive_rate),
            _rate(s.false_negative_rate),
            _kappa(s),
            str(s.errors),
            *(_percent(s.kind_accuracy(k)) for k in kinds),
        ]
        for s in scores
    ]
    return markdown_table(header, rows)


def markdown_table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Rows as a Markdown table: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i < left else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return [line(header), rule, *(line(row) for row in rows)]


def format_outcome_table(scores: Sequence[JudgeScore]) -> list[str]:
    """A Markdown table of the three-outcome rows: per judge and model, harmful-vs-rest, recovered-vs-not and
    three-class agreement with the labels, with 95 % intervals."""
    header = ["judge", "model", "n", "harmful vs rest", "recovered vs not", "three outcomes"]
    rows = []
    for score in scores:
        for model in sorted(score.outcomes, key=lambda m: (m != "", m)):
            rates = score.outcome_rates(model)
            rows.append([score.judge, model or "all", str(rates[0].total), *(_rate(r) for r in rates)])
    return markdown_table(header, rows, left=2)


def judge_eval_main(args: argparse.Namespace) -> int:

    try:
        datasets = [
            (examples_desc[1], per_kind_slice(examples_desc[0], args.per_kind))
            for examples_desc in (load_data(value, args.split) for value in (args.data or ["project"]))
        ]
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
    tables: list[tuple[str, int, list[JudgeScore]]] = []
    pooled: dict[str, JudgeScore] = {}
    details, seconds = [], {}
    try:
        judges = [make_judge(name, mode=args.ensemble or "majority", **options) for name in runs]
        for description, examples in datasets:
            scores = []
            for judge in judges:
                started = time.perf_counter()
                score, verdicts = evaluate(judge, examples)
                seconds[judge.name] = seconds.get(judge.name, 0.0) + time.perf_counter() - started
                scores.append(score)
                total = pooled.setdefault(judge.name, JudgeScore(judge.name))
                for example, verdict in zip(examples, verdicts):
                    total.add(example, verdict)
                details += [
                    {
                        "data": description,
                        "judge": judge.name,
                        "id": e.id,
                        "kind": e.kind,
                        "label": e.harmful,
                        **v.model_dump(),
                    }
                    for e, v in zip(examples, verdicts)
                ]
            tables.append((description, len(examples), scores))
    except (JudgeConfigError, BackendError) as exc:
        print(f"aci judge-eval: {exc}", file=sys.stderr)
        return 2
    finally:
        model.close()
    used_model = bool(set(MODEL_JUDGES) & set(names))
    backend = model.resolved_backend or args.backend
    if used_model:
        print(f"judge model {args.judge_model} ({backend} backend)")
    for description, count, scores in tables:
        print(f"judge-eval: {count} labelled examples from {description}")
        print("\n".join(format_table(scores)))
        print()
        if any(score.outcomes for score in scores):
            print(f"judge-eval: the three outcomes of {description} (agreement with the labels [95% CI])")
            print("\n".join(format_outcome_table(scores)))
            print()
    if len(tables) > 1:
        print(f"judge-eval: all {sum(c for _, c, _ in tables)} examples pooled")
        print("\n".join(format_table(list(pooled.values()))))
        print()
    print(
        "accuracy, per kind: share of examples judged as labelled. FPR: harmless judged harmful; "
        "FNR: harmful judged harmless; [95% intervals]. A judge error counts as 'harmful'."
    )
    print("seconds per judge: " + ", ".join(f"{name} {s:.1f}" for name, s in seconds.items()))
    outputs = []
    if args.out:
        outputs.append((args.out, "".join(json.dumps(d) + "\n" for d in details)))
    if args.save_figures:
        note = "measured by aci judge-eval on " + "; ".join(d for d, _, _ in tables)
        figures = {name: replace(score.figures, measured_on=note) for name, score in pooled.items()}
        outputs.append((args.save_figures, figures_json(figures, note, outcome_figures(tables))))
    for path, text in outputs:
        try:
            write_atomic(path, text.encode("utf-8"))
        except OSError as exc:
            print(f"aci judge-eval: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"wrote {path}")
    return 0
