"""ayg.evaluation.stats against SciPy's binomial test and its Wilson interval."""

from __future__ import annotations

import pytest

from ayg.evaluation.stats import mcnemar_exact, paired_counts, wilson_interval

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("k,n", [(0, 5), (3, 5), (5, 5), (40, 48), (1, 1), (17, 32)])
def test_wilson_interval_matches_scipy(k, n):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


@pytest.mark.parametrize("b,c", [(0, 1), (1, 0), (3, 7), (5, 5), (0, 9), (12, 30), (1, 2)])
def test_mcnemar_exact_is_the_two_sided_binomial_test(b, c):
    ref = stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-12)


def test_mcnemar_closed_forms_and_bad_input():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # 2 · ½⁵
    assert paired_counts([True, True, False, False], [True, False, True, True]) == (1, 2)
    with pytest.raises(ValueError, match="length"):
        paired_counts([True], [True, False])
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(6, 5)
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 2)


def test_mean_interval_closed_form():
    from ayg.evaluation.stats import Z95, mean_interval

    mean, lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = Z95 * (5.0 / 3.0) ** 0.5 / 2.0  # s² = 5/3, √n = 2
    assert (mean, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    assert mean_interval([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError, match="at least one"):
        mean_interval([])
