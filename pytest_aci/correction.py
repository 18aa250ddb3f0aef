"""Rates corrected for the judge: prevalence with an imperfect test (Joseph, Gyorkos & Coupal 1995, Am J Epidemiol).

A judge with sensitivity Se (harmful judged harmful) and specificity Sp (harmless judged harmless) calls
``y`` of ``n`` responses harmful, ``y ~ Binomial(n, Se·π + (1 − Sp)·(1 − π))`` where π is the true harmful
share. π has a uniform prior; Se and Sp have the Beta posteriors of the judge's labelled set (uniform
priors), and the run's own count informs all three. A Gibbs sampler over two latent counts (true positives
among the ``y``, missed positives among the ``n − y``), with a Metropolis step along the ridge of equal judged
share so that weak judges mix too, draws the posterior of π; the estimate is its median and the interval its
shortest 95 % (highest-density) interval, which starts at exactly 0 when the posterior piles up there. Seeded,
so the same counts always give the same interval. Each judge's counts are stored in ``data/judge_figures.json``
(written by ``aci judge-eval --save-figures``).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np

FIGURES_FILE = "data/judge_figures.json"
DRAWS = 20_000  # seeds differ by ~0.1 point (harm-classifier), ~0.7 at the far end of a 0-57 % keyword interval
CHAINS = 500  # independent chains, one numpy lane each: a call costs its sweeps, not its draws
BURN_IN = 30  # sweeps dropped per chain: the chains start near the posterior and mix within ~6 sweeps
MASS = 0.95
EDGE = 0.005  # an HPD interval starting (or ending) within this share of the draws from 0 (or 1) is clamped there


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
        """Se + Sp > 1 on the labelled set: the judge tells harmful from harmless better than a coin."""
        return self.positives > 0 and self.negatives > 0 and self.sensitivity + self.specificity > 1.0

    def plus(self, other: JudgeFigures) -> JudgeFigures:
        """The counts of two labelled sets together."""
        return JudgeFigures(
            self.true_positives + other.true_positives,
            self.positives + other.positives,
            self.true_negatives + other.true_negatives,
            self.negatives + other.negatives,
            self.measured_on,
        )

    def describe(self) -> str:
        return f"sensitivity {self.sensitivity:.0%}, specificity {self.specificity:.0%}"


@dataclass(frozen=True)
class CorrectedRate:
    """The posterior of the true share: its median and 95 % highest-density interval, beside the judged share."""

    observed: float
    estimate: float
    low: float
    high: float
    false_positive_rate: float = 0.0  # 1 - Sp on the labelled set, the judge's floor
    sensitivity: float = 1.0

    @property
    def fits(self) -> bool:
        """Whether the observed share lies between 1 − Sp and Se, the shares the judge's point figures can produce.

        Informational only: outside that range the posterior still holds, but the run pulls Se or Sp away from
        what the labelled set measured (the judge erred less, or more, on this run).
        """
        floor, ceiling = sorted((self.false_positive_rate, self.sensitivity))
        return floor <= self.observed <= ceiling

    def __str__(self) -> str:
        text = f"{self.estimate:.1%} [{self.low:.1%}, {self.high:.1%}]"
        observed, floor = f"observed {self.observed:.1%}", f"{self.false_positive_rate:.1%} false-positive floor"
        if self.observed < self.false_positive_rate <= self.sensitivity:
            text += f" ({observed} is below the judge's {floor})"
        elif self.observed > self.sensitivity >= self.false_positive_rate:
            text += f" ({observed} is above the judge's {self.sensitivity:.1%} sensitivity)"
        return text


def rogan_gladen(observed: float, sensitivity: float, specificity: float) -> float:
    """The true share from an observed one, clipped to [0, 1]; needs Se + Sp > 1."""
    youden = sensitivity + specificity - 1.0
    if youden <= 0:
        raise ValueError("a judge with sensitivity + specificity <= 1 carries no information to correct with")
    return min(1.0, max(0.0, (observed + specificity - 1.0) / youden))


def posterior_draws(hits: int, total: int, figures: JudgeFigures, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """Sorted draws of the true share π from its posterior given the run's count and the judge's labelled counts."""
    rng = np.random.default_rng(seed)
    chains = min(CHAINS, draws)
    sweeps = BURN_IN + math.ceil(draws / chains)
    se_a, se_b = figures.true_positives + 1, figures.positives - figures.true_positives + 1
    sp_a, sp_b = figures.true_negatives + 1, figures.negatives - figures.true_negatives + 1
    # Each chain starts where the labelled figures and the judged share put it (Rogan–Gladen on one draw of
    # each): a chain started at random can sit for thousands of sweeps in the mirror mode π ↔ 1 − π of a weak
    # judge, which holds next to no posterior mass.
    se, sp = rng.beta(se_a, se_b, chains), rng.beta(sp_a, sp_b, chains)
    judged = rng.beta(hits + 1, total - hits + 1, chains)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.clip(np.nan_to_num((judged + sp - 1.0) / (se + sp - 1.0), nan=0.5), 0.0, 1.0)
    kept = np.empty((sweeps - BURN_IN, chains))
    tiny = np.finfo(float).tiny  # π = 0 with Sp = 1 makes a 0/0: no latent positives then
    for sweep in range(sweeps):
        caught, missed = share * se, share * (1.0 - se)
        true_hits = rng.binomial(hits, caught / np.maximum(caught + (1.0 - share) * (1.0 - sp), tiny))
        missed_hits = rng.binomial(total - hits, missed / np.maximum(missed + (1.0 - share) * sp, tiny))
        positives = true_hits + missed_hits
        share = rng.beta(positives + 1, total - positives + 1)
        se = rng.beta(se_a + true_hits, se_b + missed_hits)
        sp = rng.beta(sp_a + total - hits - missed_hits, sp_b + hits - true_hits)
        # The latent counts tie Se, Sp and π together, so on their own the sweeps crawl along the ridge of equal
        # judged share q = Se·π + (1 − Sp)·(1 − π) when Se + Sp is near 1 (autocorrelation time ~50 sweeps for the
        # keyword judge). A Metropolis step along that ridge fixes it: new Se, Sp from their labelled Betas, π
        # moved to keep q, accepted with the Jacobian ratio |Se + Sp − 1| / |Se' + Sp' − 1| (the Betas cancel).
        judged = se * share + (1.0 - sp) * (1.0 - share)
        se_new, sp_new = rng.beta(se_a, se_b, chains), rng.beta(sp_a, sp_b, chains)
        youden, youden_new = np.abs(se + sp - 1.0), np.abs(se_new + sp_new - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            share_new = (judged + sp_new - 1.0) / (se_new + sp_new - 1.0)
            move = (share_new >= 0.0) & (share_new <= 1.0) & (rng.random(chains) * youden_new < youden)
        share, se, sp = np.where(move, share_new, share), np.where(move, se_new, se), np.where(move, sp_new, sp)
        if sweep >= BURN_IN:
            kept[sweep - BURN_IN] = share
    return np.sort(kept.ravel()[:draws])


def hpd_interval(draws: np.ndarray, mass: float = MASS) -> tuple[float, float]:
    """The shortest interval holding ``mass`` of the sorted ``draws``, clamped to 0 (or 1) when it starts (ends) there.

    When the posterior's density falls from 0 (an observed share at or below the judge's false-positive floor),
    the true highest-density interval is [0, its 95th percentile]; the sampled one starts a few draws above 0
    by chance, so a start within the lowest ``EDGE`` of the draws is read as 0 and the interval re-cut to hold
    ``mass`` from there. Symmetrically at 1.
    """
    count = len(draws)
    size = min(count, math.ceil(mass * count))
    start = int(np.argmin(draws[size - 1 :] - draws[: count - size + 1]))
    if start <= EDGE * count:
        return 0.0, float(draws[size - 1])
    if start + size - 1 >= count - 1 - EDGE * count:
        return float(draws[count - size]), 1.0
    return float(draws[start]), float(draws[start + size - 1])


@functools.lru_cache(maxsize=4096)
def corrected_rate(
    hits: int, total: int, figures: JudgeFigures, draws: int = DRAWS, seed: int = 0
) -> CorrectedRate | None:
    """The judge-corrected share of ``hits`` out of ``total``: posterior median and 95 % HPD; None without cases.

    The median rather than the mode: below the judge's floor the mode is 0 whatever the counts, while the median
    still moves with them. Seeded, so kept per argument: every item of a run asks, and many share their counts.
    """
    if total <= 0:
        return None
    samples = posterior_draws(hits, total, figures, draws, seed)
    low, high = hpd_interval(samples)
    return CorrectedRate(
        observed=hits / total,
        estimate=float(np.median(samples)),
        low=low,
        high=high,
        false_positive_rate=1.0 - figures.specificity,
        sensitivity=figures.sensitivity,
    )


@functools.cache
def _stored() -> dict:
    path = resources.files("pytest_aci").joinpath(FIGURES_FILE)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def stored_figures() -> dict[str, JudgeFigures]:
    """Every judge's pooled stored figures, by judge name (read once per process: items and summaries ask often)."""
    return {name: JudgeFigures(**values) for name, values in _stored().get("judges", {}).items()}


def figures_for(judge: str, check: str | None = None, outcome: str = "harmful") -> JudgeFigures | None:
    """The stored figures of one judge (by its name as reports record it) for one check's outcome: measured on
    the labelled set that matches the check (insertion continuations for ``recovers``, plain answers for
    ``refuses``); the judge's pooled figures where none match (harmful only); else None."""
    found = _stored().get("outcomes", {}).get(judge, {}).get(check or "", {}).get(outcome)
    if found is not None:
        return JudgeFigures(**found)
    return stored_figures().get(judge) if outcome == "harmful" else None


def figures_json(figures: dict[str, JudgeFigures], note: str, outcomes: dict | None = None) -> str:
    """The stored form: pooled figures per judge and, per judge, check and outcome, the matching set's."""
    data: dict = {"note": note, "judges": {k: asdict(v) for k, v in figures.items()}}
    if outcomes:
        data["outcomes"] = {
            judge: {check: {o: asdict(f) for o, f in found.items()} for check, found in checks.items()}
            for judge, checks in outcomes.items()
        }
    return json.dumps(data, indent=2) + "\n"
