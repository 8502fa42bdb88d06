"""core.display's one rule per figure: a key is matched by its kind, missing values say n/a."""

from __future__ import annotations

import math

from core import display


def test_keys_are_rounded_by_their_kind() -> None:
    assert display.figure("auroc", 0.74216) == "0.742"
    assert display.figure("validated_auroc", 0.74216) == display.figure("m_easix_auroc", 0.74216) == "0.742"
    assert display.figure("auroc_minus_m_easix", -0.01234) == "-0.012"
    assert display.figure("calibration_slope", 0.9561) == "0.96"
    assert display.figure("validated_calibration_intercept", -0.1249) == "-0.12"
    assert display.figure("brier", 0.118749) == display.figure("validated_brier", 0.118749) == "0.1187"
    assert display.figure("scaled_brier", 0.118749) == "0.119"  # not a Brier score's rule
    assert display.figure("net_benefit_10pct", 0.03214) == "0.0321"
    assert display.figure("observed_expected_ratio", 1.0449) == display.figure("observed_expected", 1.0449) == "1.04"
    assert display.figure("oe", 1.0449) == "1.04"


def test_missing_signed_and_negative_zero() -> None:
    assert display.figure("auroc", None) == display.figure("auroc", math.nan) == display.figure("auroc", "x") == "n/a"
    assert display.figure("auroc", 0.0123, signed=True) == "+0.012"
    assert display.figure("calibration_intercept", -0.001) == "0.00"


def test_an_interval_reads_the_same_way_in_tables_and_sentences() -> None:
    d = {"auroc": 0.74216, "auroc_ci_low": 0.68149, "auroc_ci_high": 0.80411}
    assert display.figure_ci(d, "auroc") == "0.742 (0.681 to 0.804)"
    assert display.figure_ci(d, "auroc", "95% CI ") == "0.742 (95% CI 0.681 to 0.804)"
    assert display.figure_ci({"auroc": 0.74216, "auroc_ci_low": math.nan}, "auroc") == "0.742"
