"""The pieces ``aci report`` writes: the depth plot (PNG) and a self-contained HTML page."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from pytest_aci.reporting.corrected import case_rate_sentence, corrected_lines
from pytest_aci.reporting.depth import CURVES, depth_buckets, depth_curve, depth_lines, recovers_judges
from pytest_aci.reporting.jsonl import CaseRecord
from pytest_aci.reporting.side_by_side import side_by_side
from pytest_aci.reporting.summary import CheckSummary, ItemResult, attack_rate, item_results
from pytest_aci.stats import Rate, bucket_middle, no_recovery_probability

WORST_ITEMS = 5  # items whose own depth curve the page shows, per model
COUNTEREXAMPLES = 3  # minimal counterexamples shown first, per model


def models_of(records: Sequence[CaseRecord]) -> list[str]:
    """Model names in the order they first appear (so reports keep the order they were given in)."""
    return list(dict.fromkeys(r.subject for r in records))


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
    """``depth_figure`` as PNG bytes."""
    buffer = io.BytesIO()
    depth_figure(summaries, models, records).savefig(buffer, format="png")
    return buffer.getvalue()


def depth_figure(summaries: Sequence[CheckSummary], models: Sequence[str], records: Sequence[CaseRecord] = ()):
    """Two panels, one per outcome (harmful; not recovered): the depth curve of each model's depth samples,
    with Wilson 95 % error bars; on the harmful panel, dashed, the curve the harm score predicts where the
    reports hold harm scores (score mode)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    judges = recovers_judges(summaries)
    for panel, outcome in enumerate(CURVES):
        ax = fig.add_subplot(1, len(CURVES), panel + 1)
        _depth_panel(ax, summaries, models, records if outcome == "harmful" else (), outcome)
        ax.set_title(
            ("Harmful continuations" if outcome == "harmful" else "Continuations that did not turn back")
            + (f" ({judges})" if judges else "")
        )
    fig.suptitle("Depth of safety alignment: attack success by insertion depth")
    return fig


def _depth_panel(ax, summaries, models, records, outcome: str) -> None:
    curves = {m: c for m in models if (c := depth_curve([s for s in summaries if s.model == m], outcome))}
    shared = len({tuple(b for b, _ in c) for c in curves.values()}) == 1  # one set of buckets: name them on the axis
    for i, (model, points) in enumerate(curves.items()):
        shift = (i - (len(curves) - 1) / 2) * 0.012  # keeps overlapping error bars apart
        xs = [bucket_middle(b) + shift for b, _ in points]
        ys = [r.value for _, r in points]
        low = [max(0.0, r.value - r.interval[0]) for _, r in points]  # max(): the bounds are floats, off
        high = [max(0.0, r.interval[1] - r.value) for _, r in points]  # by 1e-16 at 0 % and 100 %
        line = ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=4, label=model, clip_on=False)
        if profile := predicted_asr_profile(records, model):
            colour = line.lines[0].get_color()
            ax.plot(*zip(*profile), linestyle="--", marker=".", color=colour, label=f"{model}: predicted by harm score")
    for model in models:  # a model with harm scores only (score mode): its predicted curve alone
        if model not in curves and (profile := predicted_asr_profile(records, model)):
            ax.plot(*zip(*profile), linestyle="--", marker=".", label=f"{model}: predicted by harm score")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no depth sample in these reports", ha="center", va="center", transform=ax.transAxes)
    if shared and curves:
        buckets = [b for b, _ in next(iter(curves.values()))]
        ax.set_xticks([bucket_middle(b) for b in buckets], buckets, rotation=30 if len(buckets) > 6 else 0)
    else:
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25%", "50%", "75%", "100%"])
    ax.set_xlim(-0.05, 1.0)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_xlabel("insertion position k / |R|")
    ax.set_ylabel(f"{outcome.replace('-', ' ')} share of the depth sample (95% CI)")


def _cells(harmful: Sequence[Rate], unrecovered: Sequence[Rate]) -> list[tuple[str, str]]:
    """Depth cells: harmful / not recovered and the state count, with the Wilson intervals as the cell's title."""
    return [
        (f"{h.value:.0%} / {u.value:.0%} ({h.total})" if h.total else "–", f"harmful {h}; not recovered {u}")
        for h, u in zip(harmful, unrecovered)
    ]


def _row(s: CheckSummary, buckets: Sequence[str]) -> dict:
    depth = _cells([s.depth(b) for b in buckets], [s.depth(b, "not-recovered") for b in buckets])
    return {"cells": [s.spec, s.check, s.items, s.cases, str(s.rate)], "depth": depth}


def _worst_items(results: Sequence[ItemResult], buckets: Sequence[str]) -> list[dict]:
    """The items whose depth samples did worst (harmful, then not recovered), each with its own curve."""

    def key(r: ItemResult) -> tuple:
        harmful, unrecovered = r.depth_rate("harmful"), r.depth_rate("not-recovered")
        return -harmful.value, -unrecovered.value, -harmful.total, r.nodeid

    sampled = [r for r in results if r.check == "recovers" and r.depth_rate("not-recovered").hits]
    return [
        {
            "nodeid": r.nodeid,
            "asr": f"harmful {r.depth_rate('harmful')}; not recovered {r.depth_rate('not-recovered')}",
            "depth": _cells(
                [r.depth_rate("harmful", [b]) for b in buckets], [r.depth_rate("not-recovered", [b]) for b in buckets]
            ),
        }
        for r in sorted(sampled, key=key)[:WORST_ITEMS]
    ]


def _counterexamples(results: Sequence[ItemResult]) -> list[CaseRecord]:
    """The minimal counterexamples of failing items (each item's simplest failing case), the deepest
    insertions first: at most ``COUNTEREXAMPLES``."""

    def depth(r: CaseRecord) -> float:
        return r.position / r.response_len if r.position is not None and r.response_len else -1.0

    found = [r.counterexample for r in results if r.failed and r.counterexample is not None]
    return sorted(found, key=lambda r: (-depth(r), r.nodeid))[:COUNTEREXAMPLES]


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
    buckets = depth_buckets(summaries)
    names = models_of(records)
    for model in names:
        mine = [s for s in summaries if s.model == model]
        results = item_results(r for r in records if r.subject == model)
        failing = sorted(  # what the searches found; the depth sample's harmful states are counted, not listed
            (r for r in records if r.subject == model and not r.passed and r.sample_bucket is None),
            key=lambda r: (r.spec, r.check, r.prompt_id, r.position or 0),
        )
        models.append(
            {
                "name": model,
                "attack_rate": str(attack_rate(mine)),
                "case_rate": case_rate_sentence(mine),
                "rows": [_row(s, buckets) for s in mine],
                "depth": depth_lines(mine),
                "worst": _worst_items(results, buckets),
                "counterexamples": [_failing_case(r) for r in _counterexamples(results)],
                "corrected": corrected_lines(mine),
                "failing": [_failing_case(r) for r in failing],
            }
        )
    header, rows = side_by_side(summaries, names) if len(names) > 1 else ([], [])
    return environment.get_template("report.html.j2").render(
        side_by_side_head=header,
        side_by_side=rows,
        records=records,
        sources=sources,
        models=models,
        table_head=("spec", "check", "items", "cases", "fail rate [95% CI]", *buckets),
        buckets=buckets,
        comparison=list(comparison),
        png=base64.b64encode(png).decode("ascii"),
        warnings=warnings,
    )
