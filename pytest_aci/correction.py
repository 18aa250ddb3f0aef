"""Rates corrected for the judge: the Rogan–Gladen estimator with an interval that carries both uncertainties.

A judge with sensitivity Se (harmful judged harmful) and specificity Sp (harmless judged harmless)
sees a harmful share ``q = Se·π + (1 − Sp)·(1 − π)`` where the true share is π, so
``π = (q + Sp − 1) / (Se + Sp − 1)``, clipped to [0, 1]. Se and Sp are themselves measured on a
labelled set, so the interval draws Se, Sp and the observed share from their Beta posteriors
(uniform priors) and takes the 2.5 % and 97.5 % points of the corrected share: seeded, so the same
counts always give the same interval. Each judge's counts are stored in ``data/judge_figures.json``
(written by ``aci judge-eval --save-figures``).
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import asdict, dataclass
from importlib import resources

FIGURES_FILE = "data/judge_figures.json"
DRAWS = 4000


@dataclass(frozen=True)
class JudgeFigures:
    """A judge's measured agreement with human labels, as counts (so that their uncertainty is known)."""

    true_positives: int
    positives: int
    true_negatives: int
    negatives: int
    measured_on: str = ""

    @property
    def sensitivity(self) -> float:
        return self.true_positives / self.positives if self.positives else 0.0

    @property
    def specificity(self) -> float:
        return self.true_negatives / self.negatives if self.negatives else 0.0

    @property
    def informative(self) -> bool:
        """Se + Sp > 1: the judge tells harmful from harmless better than a coin, so its rates can be corrected."""
        return self.positives > 0 and self.negatives > 0 and self.sensitivity + self.specificity > 1.0

    def describe(self) -> str:
        return f"sensitivity {self.sensitivity:.0%}, specificity {self.specificity:.0%}"


@dataclass(frozen=True)
class CorrectedRate:
    observed: float
    estimate: float
    low: float
    high: float
    outside: float = 0.0  # share of draws where the observed share lies outside [1 - Sp, Se]
    false_positive_rate: float = 0.0  # 1 - Sp, the judge's measured floor
    sensitivity: float = 1.0

    @property
    def fits(self) -> bool:
        """Whether the observed share is one the judge's measured error rates can produce (in most draws).

        Below 1 − Sp (the judge's false-positive floor) or above Se the estimate is clipped: the judge
        erred less (or more) on this run than on its labelled set, and the correction says little.
        """
        return self.outside <= 0.5

    def __str__(self) -> str:
        if not self.fits:
            return (
                f"not corrected: {self.observed:.1%} judged harmful lies outside {self.false_positive_rate:.1%}-"
                f"{self.sensitivity:.1%}, what the judge's measured error rates allow (they do not transfer to "
                "this run; the clipped estimate would say nothing)"
            )
        return f"{self.estimate:.1%} [{self.low:.1%}, {self.high:.1%}]"


def rogan_gladen(observed: float, sensitivity: float, specificity: float) -> float:
    """The true share from an observed one, clipped to [0, 1]; needs Se + Sp > 1."""
    youden = sensitivity + specificity - 1.0
    if youden <= 0:
        raise ValueError("a judge with sensitivity + specificity <= 1 carries no information to correct with")
    return min(1.0, max(0.0, (observed + specificity - 1.0) / youden))


@functools.lru_cache(maxsize=4096)
def corrected_rate(
    hits: int, total: int, figures: JudgeFigures, draws: int = DRAWS, seed: int = 0
) -> CorrectedRate | None:
    """The judge-corrected share of ``hits`` out of ``total`` with a 95 % interval; None when it cannot be had.

    Seeded, so kept per argument: every item of a run asks, and many items share their counts.
    """
    if total <= 0 or not figures.informative:
        return None
    observed = hits / total
    estimate = rogan_gladen(observed, figures.sensitivity, figures.specificity)
    rng = random.Random(seed)
    samples, outside = [], 0
    for _ in range(draws):
        se = rng.betavariate(figures.true_positives + 1, figures.positives - figures.true_positives + 1)
        sp = rng.betavariate(figures.true_negatives + 1, figures.negatives - figures.true_negatives + 1)
        q = rng.betavariate(hits + 1, total - hits + 1)
        youden = se + sp - 1.0
        outside += not 1.0 - sp <= q <= se
        samples.append(min(1.0, max(0.0, (q + sp - 1.0) / youden)) if youden > 0 else (0.0 if q < 1 - sp else 1.0))
    samples.sort()
    low, high = samples[int(0.025 * draws)], samples[min(draws - 1, int(0.975 * draws))]
    return CorrectedRate(
        observed,
        estimate,
        min(low, estimate),
        max(high, estimate),
        outside / draws,
        1.0 - figures.specificity,
        figures.sensitivity,
    )


@functools.cache
def stored_figures() -> dict[str, JudgeFigures]:
    """Every judge's stored figures, by judge name (read once per process: items and summaries ask often)."""
    path = resources.files("pytest_aci").joinpath(FIGURES_FILE)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {name: JudgeFigures(**values) for name, values in data.get("judges", {}).items()}


def figures_for(judge: str) -> JudgeFigures | None:
    """The stored figures of one judge (by its name as reports record it), or None."""
    return stored_figures().get(judge)


def figures_json(figures: dict[str, JudgeFigures], note: str) -> str:
    return json.dumps({"note": note, "judges": {k: asdict(v) for k, v in figures.items()}}, indent=2) + "\n"
