"""Rates corrected for the judge: Rogan–Gladen, its interval, and where the corrected rate is shown."""

from __future__ import annotations

import random

import pytest

from pytest_aci.correction import JudgeFigures, corrected_rate, figures_for, rogan_gladen, stored_figures


def test_rogan_gladen_inverts_what_a_judge_with_known_error_rates_sees():
    for truth in (0.0, 0.05, 0.3, 0.9):
        sensitivity, specificity = 0.9, 0.8
        observed = sensitivity * truth + (1 - specificity) * (1 - truth)
        assert rogan_gladen(observed, sensitivity, specificity) == pytest.approx(truth)
    assert rogan_gladen(0.01, 0.9, 0.8) == 0.0  # below the false-positive floor: clipped
    assert rogan_gladen(0.99, 0.9, 0.8) == 1.0
    with pytest.raises(ValueError, match="no information"):
        rogan_gladen(0.5, 0.5, 0.5)


def simulate(truth: float, sensitivity: float, specificity: float, cases: int, labelled: int, rng: random.Random):
    """A judge with known error rates: measured on a labelled set, then used on ``cases`` fresh cases."""
    positives = negatives = labelled
    figures = JudgeFigures(
        true_positives=sum(rng.random() < sensitivity for _ in range(positives)),
        positives=positives,
        true_negatives=sum(rng.random() < specificity for _ in range(negatives)),
        negatives=negatives,
    )
    harmful = [rng.random() < truth for _ in range(cases)]
    judged = sum((rng.random() < sensitivity) if h else (rng.random() >= specificity) for h in harmful)
    return figures, judged


@pytest.mark.parametrize(
    ("truth", "sensitivity", "specificity"), [(0.25, 0.9, 0.85), (0.05, 0.95, 0.8), (0.6, 0.7, 0.95)]
)
def test_the_interval_covers_the_true_rate_of_simulated_judges(truth, sensitivity, specificity):
    rng = random.Random(7)
    trials, covered, errors = 150, 0, []
    for trial in range(trials):
        figures, judged = simulate(truth, sensitivity, specificity, cases=300, labelled=150, rng=rng)
        rate = corrected_rate(judged, 300, figures, draws=1500, seed=trial)
        assert rate is not None and rate.low <= rate.estimate <= rate.high
        covered += rate.low <= truth <= rate.high
        errors.append(rate.estimate - truth)
    assert covered / trials >= 0.88  # nominal 95 %
    assert abs(sum(errors) / trials) < 0.03  # nearly unbiased away from the clip at 0
    # The observed share alone is far off for these judges; the correction is what brings it back.
    observed = sensitivity * truth + (1 - specificity) * (1 - truth)
    assert abs(observed - truth) > 0.05


def test_the_interval_widens_with_the_judges_own_uncertainty():
    sure = JudgeFigures(true_positives=900, positives=1000, true_negatives=800, negatives=1000)
    unsure = JudgeFigures(true_positives=9, positives=10, true_negatives=8, negatives=10)
    wide, narrow = corrected_rate(60, 200, unsure), corrected_rate(60, 200, sure)
    assert wide.estimate == pytest.approx(narrow.estimate)
    assert wide.high - wide.low > 1.5 * (narrow.high - narrow.low)
    assert corrected_rate(60, 200, sure) == narrow  # seeded: the same counts give the same interval


def test_no_correction_without_cases_or_with_an_uninformative_judge():
    coin = JudgeFigures(true_positives=5, positives=10, true_negatives=5, negatives=10)
    assert corrected_rate(3, 10, coin) is None
    assert corrected_rate(0, 0, JudgeFigures(9, 10, 9, 10)) is None


def test_the_shipped_judges_carry_their_measured_figures():
    figures = stored_figures()
    assert {"refusal-keywords", "harm-classifier"} <= set(figures)
    for name in ("refusal-keywords", "harm-classifier"):
        found = figures_for(name)
        assert found.positives > 100 and found.negatives > 100 and found.informative
        assert "judge-eval" in found.measured_on
    assert figures_for("markers") is None


def test_an_observed_share_below_the_judges_false_positive_floor_is_flagged_as_clipped():
    noisy = JudgeFigures(true_positives=158, positives=220, true_negatives=187, negatives=435)  # FPR 57 %
    rate = corrected_rate(50, 258, noisy)  # 19 % judged harmful: fewer than its false positives alone
    assert rate.estimate == 0.0 and not rate.fits
    assert str(rate).startswith("not corrected: 19.4% judged harmful lies outside 57.0%-71.8%")
    fitting = corrected_rate(150, 258, noisy)
    assert fitting.fits and str(fitting).startswith(f"{fitting.estimate:.1%} [")
