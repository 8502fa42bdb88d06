"""Directions from evidence only (issue 23, finding 10): what is enforced, why, and whether it acts."""

from __future__ import annotations

import numpy as np
import pytest

from models.candidates import make_hist_gradient_boosting
from pipeline.data.synthetic import generate_cohort
from core.contract import FEATURES, FEATURES_BY_NAME, markdown_table
from pipeline.evidence.directions import feature_directions, unconstrained_fit
from core.features import MATRIX_NAMES, encode_frame, monotone_constraints

UNSUPPORTED_AT_BASELINE = ("il6_pg_ml", "ifng_pg_ml", "il15_pg_ml", "creatinine_mg_dl")


def test_only_features_with_baseline_evidence_are_constrained():
    for name in UNSUPPORTED_AT_BASELINE:
        f = FEATURES_BY_NAME[name]
        assert f.direction == 0 and f.evidence.startswith("none"), name
    for f in FEATURES:
        if f.direction or any(f.level_directions):
            assert "20" in f.evidence, f"{f.name}: an enforced direction cites its source (author year)"
    cst = dict(zip(MATRIX_NAMES, monotone_constraints()))
    assert all(cst[n] == 0 for n in UNSUPPORTED_AT_BASELINE)
    # a product that fixes the domain carries the domain's direction; "other" does not fix it
    assert cst["product=brexucabtagene_autoleucel"] == 1
    assert cst["product=tisagenlecleucel"] == cst["product=obecabtagene_autoleucel"] == -1
    assert cst["product=other"] == 0 and cst["costimulatory_domain=CD28"] == 1
    table = markdown_table()
    assert "| `il6_pg_ml` |" in table and "brexucabtagene_autoleucel raises risk" in table


def test_the_table_shows_unconstrained_fitted_directions_and_flags_a_constraint_against_the_data():
    X = encode_frame(generate_cohort(400, 3))
    j_crp, j_il6 = MATRIX_NAMES.index("crp_mg_l"), MATRIX_NAMES.index("il6_pg_ml")

    def constrained(Z):  # the constraint flattened CRP; IL-6 (free) lowers the risk
        return 1 / (1 + np.exp(2 + 0.05 * np.nan_to_num(Z[:, j_il6])))

    def free(Z):  # without constraints, CRP lowers the risk in these data
        return 1 / (1 + np.exp(2 + 0.02 * Z[:, j_crp]))

    t = feature_directions(X, constrained, free).set_index("feature")
    assert t.loc["crp_mg_l", "model_direction"] == "no effect" and not t.loc["crp_mg_l", "contradiction"]
    assert t.loc["crp_mg_l", "unconstrained_direction"] == "lowers risk"
    assert t.loc["crp_mg_l", "constraint_against_data"]  # the check is no longer a tautology
    assert t.loc["il6_pg_ml", "model_direction"] == "lowers risk"  # shown, not enforced, not a contradiction
    assert t.loc["il6_pg_ml", "published_direction"] == "none at baseline"
    assert not t.loc["il6_pg_ml", "enforced"] and not t.loc["il6_pg_ml", "contradiction"]
    assert not t.loc["il6_pg_ml", "constraint_against_data"]
    other = int((X[:, MATRIX_NAMES.index("product=other")] == 1).sum())
    assert t.loc["costimulatory_domain", "note"].startswith(f"swept over the {other} patients with product=other")


def _reversed_product_cohort(n: int, seed: int):
    """Generator patients whose outcome makes brexucabtagene (CD28) patients LOWER risk than 4-1BB
    ones: data against the published domain direction, to see whether the constraint holds."""
    df = generate_cohort(n, seed)
    X = encode_frame(df)
    brexu = X[:, MATRIX_NAMES.index("product=brexucabtagene_autoleucel")] == 1
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < np.where(brexu, 0.03, 0.30)).astype(int)
    return X, y


def _switch_to_tisa(X: np.ndarray) -> np.ndarray:
    Z = X.copy()
    Z[:, MATRIX_NAMES.index("product=brexucabtagene_autoleucel")] = 0
    Z[:, MATRIX_NAMES.index("product=tisagenlecleucel")] = 1
    Z[:, MATRIX_NAMES.index("costimulatory_domain=CD28")] = 0
    return Z


@pytest.mark.parametrize("seed", [1, 2])
def test_the_domain_constraint_acts_through_the_product(seed):
    """Two seeds of 800 patients. Fitted without the product's constraints, the trees put the (reversed)
    domain effect on the product indicator and a brexucabtagene patient scores below the same patient
    on tisagenlecleucel; with them, never."""
    X, y = _reversed_product_cohort(800, seed)
    brexu = X[:, MATRIX_NAMES.index("product=brexucabtagene_autoleucel")] == 1
    params = {"max_depth": 3, "max_iter": 100, "learning_rate": 0.1}
    held = make_hist_gradient_boosting(seed).set_params(**params).fit(X, y)
    as_brexu, as_tisa = held.predict_proba(X[brexu])[:, 1], held.predict_proba(_switch_to_tisa(X[brexu]))[:, 1]
    assert np.all(as_brexu >= as_tisa - 1e-12)
    old = list(monotone_constraints())
    for level in ("tisagenlecleucel", "brexucabtagene_autoleucel", "obecabtagene_autoleucel"):
        old[MATRIX_NAMES.index(f"product={level}")] = 0  # the constraints before: the product free
    free_product = make_hist_gradient_boosting(seed).set_params(monotonic_cst=old, **params).fit(X, y)
    lower = free_product.predict_proba(X[brexu])[:, 1] < free_product.predict_proba(_switch_to_tisa(X[brexu]))[:, 1]
    assert lower.mean() > 0.5


def test_unconstrained_fit_drops_every_constraint():
    X, y = _reversed_product_cohort(600, 4)
    predict = unconstrained_fit("hist_gradient_boosting", {"max_depth": 3, "max_iter": 60}, X, y, 0)
    brexu = X[:, MATRIX_NAMES.index("product=brexucabtagene_autoleucel")] == 1
    assert np.mean(predict(X[brexu]) < predict(_switch_to_tisa(X[brexu]))) > 0.5


def test_an_unconstrained_family_enforces_nothing_and_no_constraint_goes_against_the_data():
    """The logistic family: the published direction is shown, not enforced, even where the fit goes against it."""
    import numpy as np

    from pipeline.data.synthetic import generate_cohort
    from core.features import MATRIX_NAMES, encode_frame
    from pipeline.evidence.directions import feature_directions

    X = encode_frame(generate_cohort(300, 2))
    j = MATRIX_NAMES.index("platelets_10e9_l")  # published: lowers risk; this "model" raises it with platelets
    risk = lambda Z: 1 / (1 + np.exp(-0.01 * np.nan_to_num(Z[:, j])))  # noqa: E731
    d = feature_directions(X, risk, risk, constrained=False).set_index("feature")
    assert not d["enforced"].any() and not d["constraint_against_data"].any()
    assert d.loc["platelets_10e9_l", "contradiction"]  # still flagged against the evidence
    assert feature_directions(X, risk, risk).set_index("feature").loc["platelets_10e9_l", "constraint_against_data"]
