"""Rates corrected for the judge: the posterior of the true share, its interval, and how it prints."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pytest_aci.correction import (
    CorrectedRate,
    JudgeFigures,
    corrected_rate,
    figures_for,
    hpd_interval,
    rogan_gladen,
    stored_figures,
)

KEYWORDS = JudgeFigures(true_positives=158, positives=220, true_negatives=187, negatives=435)  # Se 72 %, FPR 57 %
CLASSIFIER = JudgeFigures(true_positives=214, positives=220, true_negatives=405, negatives=435)  # Se 97 %, FPR 7 %


def test_rogan_gladen_inverts_what_a_judge_with_known_error_rates_sees():
    for truth in (0.0, 0.05, 0.3, 0.9):
        sensitivity, specificity = 0.9, 0.8
        observed = sensitivity * truth + (1 - specificity) * (1 - truth)
        assert rogan_gladen(observed, sensitivity, specificity) == pytest.approx(truth)
    assert rogan_gladen(0.01, 0.9, 0.8) == 0.0  # below the false-positive floor: clipped
    assert rogan_gladen(0.99, 0.9, 0.8) == 1.0
    with pytest.raises(ValueError, match="no information"):
        rogan_gladen(0.5, 0.5, 0.5)


def integrated_posterior(hits: int, total: int, figures: JudgeFigures, cells: int = 300) -> tuple[float, float, float]:
    """Median and 95 % HPD of π by brute quadrature over (π, Se, Sp): what the sampler must reproduce."""
    grid = (np.arange(cells) + 0.5) / cells
    se, sp = grid[:, None], grid[None, :]
    labelled = (
        figures.true_positives * np.log(se)
        + (figures.positives - figures.true_positives) * np.log1p(-se)
        + figures.true_negatives * np.log(sp)
        + (figures.negatives - figures.true_negatives) * np.log1p(-sp)
    )
    log_density = np.empty(cells)
    for i, share in enumerate(grid):
        judged = se * share + (1 - sp) * (1 - share)
        log_joint = labelled + hits * np.log(judged) + (total - hits) * np.log1p(-judged)
        peak = log_joint.max()
        log_density[i] = peak + np.log(np.exp(log_joint - peak).sum())
    density = np.exp(log_density - log_density.max())
    density /= density.sum()
    median = float(np.interp(0.5, np.cumsum(density), grid + 0.5 / cells))
    inside = np.argsort(-density)[: int(np.searchsorted(np.cumsum(np.sort(density)[::-1]), 0.95)) + 1]
    return median, float(inside.min() / cells), float((inside.max() + 1) / cells)


@pytest.mark.parametrize(
    ("hits", "total", "figures"),
    [
        (50, 258, KEYWORDS),  # far below the weak judge's floor
        (150, 258, KEYWORDS),  # inside its range, where plain Gibbs sweeps crawl (Se + Sp = 1.15)
        (40, 258, CLASSIFIER),
        (60, 200, JudgeFigures(9, 10, 8, 10)),  # a judge measured on 20 rows
        (240, 250, JudgeFigures(135, 150, 140, 150)),  # above its sensitivity: piles up at 1
    ],
)
def test_the_sampler_draws_the_posterior_that_quadrature_gives(hits, total, figures):
    median, low, high = integrated_posterior(hits, total, figures)
    rate = corrected_rate(hits, total, figures)
    # An HPD end is where the draws thin out: its Monte Carlo error grows with the posterior's width.
    slack = 0.006 + 0.03 * (high - low)
    assert rate.estimate == pytest.approx(median, abs=0.006)
    assert rate.low == pytest.approx(low, abs=slack) and rate.high == pytest.approx(high, abs=slack)


def simulate(truth: float, sensitivity: float, specificity: float, cases: int, rng: np.random.Generator):
    """A judge with known error rates, measured on 150 + 150 fresh labelled rows, then used on ``cases`` cases."""
    figures = JudgeFigures(int(rng.binomial(150, sensitivity)), 150, int(rng.binomial(150, specificity)), 150)
    harmful = rng.binomial(cases, truth)
    judged = rng.binomial(harmful, sensitivity) + rng.binomial(cases - harmful, 1 - specificity)
    return figures, int(judged)


@pytest.mark.parametrize(
    ("truth", "sensitivity", "specificity", "cases"),
    [
        (0.0, 0.9, 0.93, 250),
        (0.01, 0.9, 0.93, 250),
        (0.05, 0.8, 0.85, 300),  # a weaker judge: 15 % false positives swamp 5 % harmful
        (0.30, 0.9, 0.93, 200),
        (0.90, 0.8, 0.85, 250),
    ],
)
def test_the_interval_covers_the_true_rate_of_simulated_judges(truth, sensitivity, specificity, cases):
    rng = np.random.default_rng(7)
    trials, covered, errors = 300, 0, []  # at 95 % coverage, 300 trials fall below 93 % about 3 % of the time
    for trial in range(trials):
        figures, judged = simulate(truth, sensitivity, specificity, cases, rng)
        rate = corrected_rate(judged, cases, figures, draws=8000, seed=trial)
        assert rate is not None and 0.0 <= rate.low <= rate.estimate <= rate.high <= 1.0
        covered += rate.low <= truth <= rate.high
        errors.append(abs(rate.estimate - truth))
    assert covered / trials >= 0.93, covered / trials
    # Where the judged share alone is far off, the correction is what brings it back.
    observed = sensitivity * truth + (1 - specificity) * (1 - truth)
    if abs(observed - truth) > 0.05:
        assert np.mean(errors) < abs(observed - truth) / 2


def test_an_observed_share_below_the_judges_false_positive_floor_gets_an_interval_from_zero():
    rate = corrected_rate(50, 258, KEYWORDS)  # 19 % judged harmful: fewer than its false positives alone
    assert rate.low == 0.0 and 0.0 < rate.estimate < rate.high < 0.1 and not rate.fits
    assert str(rate) == (
        f"{rate.estimate:.1%} [0.0%, {rate.high:.1%}] (observed 19.4% is below the judge's 57.0% false-positive floor)"
    )
    good_model = corrected_rate(5, 258, CLASSIFIER)  # 1.9 % judged against a 6.9 % floor: the gate's usual case
    assert good_model.low == 0.0 and good_model.high < 0.03
    assert str(good_model).startswith(f"{good_model.estimate:.1%} [0.0%, ")
    assert "not corrected" not in str(rate) + str(good_model)
    fitting = corrected_rate(150, 258, KEYWORDS)
    assert fitting.fits and str(fitting) == f"{fitting.estimate:.1%} [{fitting.low:.1%}, {fitting.high:.1%}]"
    inside = corrected_rate(100, 258, CLASSIFIER)
    assert 0.25 < inside.low < inside.estimate < inside.high < 0.45  # away from the edges, nothing is clamped
    above = corrected_rate(240, 250, JudgeFigures(135, 150, 140, 150))
    assert above.high == 1.0 and above.low > 0.9 and "above the judge's 90.0% sensitivity" in str(above)


def test_the_hpd_interval_is_the_shortest_and_clamps_only_at_the_edges():
    rng = np.random.default_rng(0)
    skewed = np.sort(rng.gamma(8.0, 0.03, 20_000))  # right-skewed: the shortest interval sits left of the tails'
    low, high = hpd_interval(skewed)
    tails = np.quantile(skewed, [0.025, 0.975])
    assert 0.0 < low < tails[0] and high - low < tails[1] - tails[0]
    assert np.mean((skewed >= low) & (skewed <= high)) == pytest.approx(0.95, abs=0.001)
    # A lower tail left out by the shortest interval that holds under 0.5 % of the draws is read as noise at 0.
    nearly = np.sort(rng.gamma(3.0, 0.03, 20_000))
    assert hpd_interval(nearly) == (0.0, pytest.approx(np.quantile(nearly, 0.95), abs=1e-3))
    falling = np.sort(rng.beta(1.0, 30.0, 20_000))  # density highest at 0
    assert hpd_interval(falling) == (0.0, pytest.approx(np.quantile(falling, 0.95), abs=1e-3))
    rising = np.sort(rng.beta(30.0, 1.0, 20_000))
    assert hpd_interval(rising) == (pytest.approx(np.quantile(rising, 0.05), abs=1e-3), 1.0)


def test_the_interval_widens_with_the_judges_own_uncertainty():
    sure = JudgeFigures(true_positives=900, positives=1000, true_negatives=800, negatives=1000)
    unsure = JudgeFigures(true_positives=9, positives=10, true_negatives=8, negatives=10)
    wide, narrow = corrected_rate(60, 200, unsure), corrected_rate(60, 200, sure)
    assert wide.estimate == pytest.approx(narrow.estimate, abs=0.05)
    assert wide.high - wide.low > 1.5 * (narrow.high - narrow.low)


def test_the_same_counts_give_the_same_result_and_other_seeds_nearly_so():
    first = corrected_rate.__wrapped__(40, 258, CLASSIFIER)  # past the cache: the seed alone must fix the draws
    assert corrected_rate.__wrapped__(40, 258, CLASSIFIER) == first == corrected_rate(40, 258, CLASSIFIER)
    for seed in range(1, 4):
        other = corrected_rate.__wrapped__(40, 258, CLASSIFIER, seed=seed)
        assert other != first
        assert abs(other.estimate - first.estimate) < 0.005
        assert abs(other.low - first.low) < 0.005 and abs(other.high - first.high) < 0.005


def test_no_cases_no_rate_but_an_uninformative_judge_still_gets_a_wide_posterior():
    assert corrected_rate(0, 0, CLASSIFIER) is None and corrected_rate(0, -1, CLASSIFIER) is None
    coin = JudgeFigures(true_positives=5, positives=10, true_negatives=5, negatives=10)
    worse = JudgeFigures(true_positives=3, positives=10, true_negatives=4, negatives=10)  # Se + Sp < 1
    for figures in (coin, worse):
        rate = corrected_rate(3, 10, figures)
        assert isinstance(rate, CorrectedRate) and not figures.informative
        assert rate.high - rate.low > 0.8 and rate.low <= rate.estimate <= rate.high
        assert str(rate).startswith(f"{rate.estimate:.1%} [{rate.low:.1%}, {rate.high:.1%}]")
    unlabelled = corrected_rate(3, 10, JudgeFigures(0, 0, 0, 0))  # no labelled rows: uniform Se and Sp
    assert unlabelled is not None and unlabelled.high - unlabelled.low > 0.8


def test_a_call_is_fast_enough_for_every_item():
    for hits, figures in ((50, KEYWORDS), (150, KEYWORDS), (5, CLASSIFIER)):
        elapsed = []
        for _ in range(3):
            start = time.perf_counter()
            corrected_rate.__wrapped__(hits, 258, figures)
            elapsed.append(time.perf_counter() - start)
        assert min(elapsed) < 0.25  # ~20 ms on a 2-core machine; the bound only catches a regression


def test_the_shipped_judges_carry_their_measured_figures():
    figures = stored_figures()
    assert {"refusal-keywords", "harm-classifier"} <= set(figures)
    for name in ("refusal-keywords", "harm-classifier"):
        found = figures_for(name)
        assert found.positives > 50 and found.negatives > 100 and found.informative
        assert "judge-eval" in found.measured_on
        # Per check, the figures of the labelled set that matches it: continuations read by hand for recovers
        # (harmful, and not recovered), long answers for refuses.
        for check, outcome in (("recovers", "harmful"), ("recovers", "not-recovered"), ("refuses", "harmful")):
            matching = figures_for(name, check, outcome)
            assert matching is not None and matching.positives > 20 and matching.negatives > 50
            assert ("continuations" in matching.measured_on) == (check == "recovers")
    assert figures_for("markers") is None
