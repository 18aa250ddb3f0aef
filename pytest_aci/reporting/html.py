"""The pieces ``aci report`` writes: the depth plot (PNG) and a self-contained HTML page."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from pytest_aci.reporting.jsonl import CaseRecord
from pytest_aci.reporting.summary import CheckSummary, attack_rate, case_rate_sentence, corrected_lines
from pytest_aci.stats import BUCKETS, Rate, no_recovery_probability

# Where each depth bucket sits on the x axis, as a fraction of |R| (k = 0, then the middle of each quarter).
DEPTH_X = (0.0, 0.125, 0.375, 0.625, 0.875)


def models_of(records: Sequence[CaseRecord]) -> list[str]:
    """Model names in the order they first appear (so reports keep the order they were given in)."""
    return list(dict.fromkeys(r.subject for r in records))


def depth_curve(summaries: Sequence[CheckSummary], model: str) -> list[Rate]:
    """ASR of the model's ``recovers`` cases per depth bucket, pooled over specs."""
    chosen = [s for s in summaries if s.model == model and s.check == "recovers"]
    return [Rate(sum(s.depth(b).hits for s in chosen), sum(s.depth(b).total for s in chosen)) for b in BUCKETS]


PROFILE_BINS = 10


def predicted_asr_profile(records: Sequence[CaseRecord], model: str) -> list[tuple[float, float]]:
    """(relative position k/|R|, predicted ASR) in ten bins of k/|R|, from the scored cases of a model:
    the mean P(no recovery) that the harm margins give."""
    sums: dict[int, list[float]] = {}
    for r in records:
        if r.subject == model and r.harm_score is not None and r.position is not None:
            depth = r.position / r.response_len if r.response_len else 0.0
            total = sums.setdefault(min(PROFILE_BINS - 1, int(depth * PROFILE_BINS)), [0.0, 0])
            total[0] += no_recovery_probability(r.harm_score)
            total[1] += 1
    return [((b + 0.5) / PROFILE_BINS, total / count) for b, (total, count) in sorted(sums.items())]


def plot_png(summaries: Sequence[CheckSummary], models: Sequence[str], records: Sequence[CaseRecord] = ()) -> bytes:
    """The depth curve, one line per model with Wilson 95 % error bars, as PNG bytes; below it the
    harm-margin profile (``--aci-mode score``, targeted search) when the reports hold harm scores."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    profiles = {m: p for m in models if (p := predicted_asr_profile(records, m))}
    fig = Figure(figsize=(8, 8 if profiles else 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(2, 1, 1) if profiles else fig.add_subplot()
    curves = {m: depth_curve(summaries, m) for m in models}
    curves = {m: c for m, c in curves.items() if any(r.total for r in c)}
    for i, (model, rates) in enumerate(curves.items()):
        shift = (i - (len(curves) - 1) / 2) * 0.012  # keeps overlapping error bars apart
        points = [(x + shift, r) for x, r in zip(DEPTH_X, rates) if r.total]
        xs = [x for x, _ in points]
        ys = [r.value for _, r in points]
        low = [max(0.0, r.value - r.interval[0]) for _, r in points]  # max(): the bounds are floats, off
        high = [max(0.0, r.interval[1] - r.value) for _, r in points]  # by 1e-16 at 0 % and 100 %
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=4, label=model, clip_on=False)
    if curves:
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no recovers cases", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(DEPTH_X, BUCKETS)
    ax.set_xlim(-0.05, 1.0)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_xlabel("insertion position k / |R|")
    ax.set_ylabel("ASR of recovers cases (95% CI)")
    ax.set_title("Depth of safety alignment: attack success by insertion depth")
    if profiles:
        low = fig.add_subplot(2, 1, 2)
        for model, points in profiles.items():
            low.plot([x for x, _ in points], [y for _, y in points], marker="o", label=model)
        low.set_xlim(0, 1)
        low.set_ylim(0, 1)
        low.grid(alpha=0.3)
        low.legend(loc="best")
        low.set_xlabel("insertion position k / |R|")
        low.set_ylabel("predicted ASR: mean P(no recovery)")
        low.set_title("Harm score by depth: teacher-forced probability that the model does not recover")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _row(s: CheckSummary) -> dict:
    depth = [(f"{r.value:.0%} ({r.total})" if r.total else "–", str(r)) for r in (s.depth(b) for b in BUCKETS)]
    return {"cells": [s.spec, s.check, s.items, s.cases, str(s.rate)], "depth": depth}


def _failing_case(r: CaseRecord) -> dict:
    if r.position is None:
        where = f"whole response, |R| = {r.response_len}"
    else:
        depth = r.position / r.response_len if r.response_len else 0.0
        where = f"k = {r.position} / |R| = {r.response_len} ({depth:.0%} deep)"
    return {
        "spec": r.spec,
        "prompt_id": r.prompt_id,
        "check": r.check,
        "where": where,
        "prompt": r.prompt,
        "span": "–" if r.span is None else r.span,
        "continuation": r.continuation,
        "judge": f"{r.judge}: {r.verdict.reason}",
    }


def build_html(
    records: Sequence[CaseRecord],
    summaries: Sequence[CheckSummary],
    png: bytes,
    sources: Sequence[str],
    warnings: Sequence[str] = (),
    comparison: Sequence[str] = (),
) -> str:
    """One self-contained page: summary tables, the embedded depth plot, the failing cases, skipped lines.

    A jinja2 template (``data/templates/report.html.j2``) with autoescape: every text from a report is escaped.
    """
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pytest_aci", "data/templates"), autoescape=True, keep_trailing_newline=True
    )
    models = []
    for model in models_of(records):
        mine = [s for s in summaries if s.model == model]
        failing = sorted(
            (r for r in records if r.subject == model and not r.passed),
            key=lambda r: (r.spec, r.check, r.prompt_id, r.position or 0),
        )
        models.append(
            {
                "name": model,
                "attack_rate": str(attack_rate(mine)),
                "case_rate": case_rate_sentence(mine),
                "rows": [_row(s) for s in mine],
                "corrected": corrected_lines(mine),
                "failing": [_failing_case(r) for r in failing],
            }
        )
    return environment.get_template("report.html.j2").render(
        records=records,
        sources=sources,
        models=models,
        table_head=("spec", "check", "items", "cases", "fail rate [95% CI]", *BUCKETS),
        comparison=list(comparison),
        png=base64.b64encode(png).decode("ascii"),
        warnings=warnings,
    )
