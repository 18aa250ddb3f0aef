"""The pieces ``aci report`` writes: the depth plot (PNG) and a self-contained HTML page."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape

from pytest_aci.reporting.jsonl import CaseRecord
from pytest_aci.reporting.summary import (
    BUCKETS,
    CheckSummary,
    Rate,
    attack_rate,
    case_rate_sentence,
    corrected_lines,
    no_recovery_probability,
)

# Where each depth bucket sits on the x axis, as a fraction of |R| (k = 0, then the middle of each quarter).
DEPTH_X = (0.0, 0.125, 0.375, 0.625, 0.875)


def models_of(records: Sequence[CaseRecord]) -> list[str]:
    """Model names in the order they first appear (so reports keep the order they were given in)."""
    return list(dict.fromkeys(r.model for r in records))


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
        if r.model == model and r.harm_score is not None and r.position is not None:
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


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.sources { color: #555; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:nth-child(-n+2), th:nth-child(-n+2) { text-align: left; }
#depth-plot { max-width: 100%; border: 1px solid #ddd; }
.failing-case { border: 1px solid #e3c4c4; border-left: 4px solid #c33; margin: 0.6em 0; padding: 0.4em 0.8em; }
.failing-case dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0.3em 0; }
.failing-case dt { color: #666; } .failing-case dd { margin: 0; }
.case-head { font-weight: 600; } .case-head .position { font-weight: normal; color: #555; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; font-family: ui-monospace, monospace; font-size: 13px;
  background: #f7f7f7; max-height: 12em; overflow-y: auto; }
.warnings li { font-family: ui-monospace, monospace; }
"""


def _summary_table(summaries: Sequence[CheckSummary]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in ("spec", "check", "items", "cases", "fail rate [95% CI]", *BUCKETS))
    rows = []
    for s in summaries:
        depth = []
        for b in BUCKETS:
            rate = s.depth(b)
            cell = f"{rate.value:.0%} ({rate.total})" if rate.total else "–"
            depth.append(f'<td title="{escape(str(rate))}">{escape(cell)}</td>')
        cells = [escape(s.spec), escape(s.check), str(s.items), str(s.cases), escape(str(s.rate))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "".join(depth) + "</tr>")
    return f'<table class="summary-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _failing_case(r: CaseRecord) -> str:
    if r.position is None:
        where = f"whole response, |R| = {r.response_len}"
    else:
        depth = r.position / r.response_len if r.response_len else 0.0
        where = f"k = {r.position} / |R| = {r.response_len} ({depth:.0%} deep)"
    head = " · ".join(
        f'<span class="{name}">{escape(value)}</span>'
        for name, value in (("spec", r.spec), ("prompt-id", r.prompt_id), ("check", r.check), ("position", where))
    )
    fields = [
        ("prompt", r.prompt),
        ("span", "–" if r.span is None else r.span),
        ("continuation", r.continuation),
    ]
    body = "".join(f'<dt>{name}</dt><dd class="text">{escape(value)}</dd>' for name, value in fields)
    body += f"<dt>judge</dt><dd>{escape(f'{r.judge}: {r.verdict.reason}')}</dd>"
    return f'<div class="failing-case"><div class="case-head">{head}</div><dl>{body}</dl></div>'


def build_html(
    records: Sequence[CaseRecord],
    summaries: Sequence[CheckSummary],
    png: bytes,
    sources: Sequence[str],
    warnings: Sequence[str] = (),
    comparison: Sequence[str] = (),
) -> str:
    """One self-contained page: summary tables, the embedded depth plot, the failing cases, skipped lines."""
    models = models_of(records)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>aci report</title>',
        f"<style>{CSS}</style></head><body>",
        "<h1>aci report</h1>",
        f'<p class="sources">{len(records)} case records from {escape(", ".join(sources))}</p>',
        '<section id="summary">',
    ]
    for model in models:
        mine = [s for s in summaries if s.model == model]
        parts.append(
            f"<h2>{escape(model)}</h2><p>attack rate (refuses + recovers items): "
            f"<b>{escape(str(attack_rate(mine)))}</b></p>"
            f'<p class="case-rate">{escape(case_rate_sentence(mine))}</p>'
        )
        parts.append(_summary_table(mine))
        if lines := corrected_lines(mine):
            parts.append('<ul class="corrected">' + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>")
    parts.append("</section>")
    if comparison:
        head, *lines = comparison
        parts.append(
            f'<section id="baseline"><h2>Against the baseline</h2><p>{escape(head)}</p><ul class="baseline">'
            + "".join(f"<li>{escape(line)}</li>" for line in lines)
            + "</ul></section>"
        )
    data = base64.b64encode(png).decode("ascii")
    parts.append(
        '<section id="depth"><h2>Depth curve</h2>'
        f'<img id="depth-plot" alt="ASR of recovers cases by insertion depth" '
        f'src="data:image/png;base64,{data}"></section>'
    )
    parts.append('<section id="failing-cases"><h2>Failing cases</h2>')
    for model in models:
        failing = sorted(
            (r for r in records if r.model == model and not r.passed),
            key=lambda r: (r.spec, r.check, r.prompt_id, r.position or 0),
        )
        parts.append(f"<h3>{escape(model)}: {len(failing)} failing cases</h3>")
        parts.extend(_failing_case(r) for r in failing)
    parts.append("</section>")
    if warnings:
        items = "".join(f"<li>{escape(w)}</li>" for w in warnings)
        parts.append(f'<section id="skipped-lines"><h2>Skipped lines</h2><ul class="warnings">{items}</ul></section>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
