"""The model card (Mitchell et al., FAT* 2019) of one run, as Markdown and HTML from one document:
the run's facts and evidence here, its prose in pipeline/report/templates/model_card.txt.j2.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any, Mapping

from core.contract import FEATURES_BY_NAME, INTENDED_USE, ORACLE_COLUMN
from pipeline.evidence import DEFAULT_SUBGROUPS, MODEL, Evidence
from pipeline.report import sections as s
from pipeline.report.document import BANNER, Section, ci, rounded, lines, num, prose, to_html, to_markdown

MODEL_CARD_MD = "model_card.md"
MODEL_CARD_HTML = "model_card.html"
MODEL_CARD_SECTIONS = (
    "Model details",
    "Intended use",
    "Factors",
    "Metrics",
    "Evaluation data",
    "Training data",
    "Quantitative analyses",
    "Ethical considerations",
    "Caveats and recommendations",
)


def _get(d: Mapping[str, Any], key: str, default: str = "not recorded") -> str:
    v = d.get(key)
    return default if v is None or v == "" else str(v)


def _levels(subgroup: str, unit: str = "") -> str:
    """'< 18 / >= 18' from the subgroup the evidence evaluates (pipeline.evidence.DEFAULT_SUBGROUPS)."""
    spec = next(g for g in DEFAULT_SUBGROUPS if g.name == subgroup)
    return " / ".join(label.removesuffix(unit) for _, label in spec.levels)


def _factors() -> str:
    """The factors paragraph, its subgroups and categories as the evidence and the contract define them."""
    return prose("model_card").factors(
        age_levels=_levels("age", " y"),
        domains=" / ".join(FEATURES_BY_NAME["costimulatory_domain"].categories),
        blasts_levels=_levels("marrow_blasts"),
        antigens=", ".join(FEATURES_BY_NAME["target_antigen"].categories),
    )


def render_model_card(
    evidence: Evidence,
    model_info: Mapping[str, Any],
    data_provenance: Mapping[str, Any],
) -> tuple[str, str]:
    """The model card (Mitchell et al., FAT* 2019) as (markdown, html), from one run's evidence.

    model_info (all optional): name, version, run_id, trained_at, kind, params, thresholds,
      calibration, contract_version, git_commit, n_params, instability (pipeline.train.instability's summary),
      transport (an IECV's summary, pipeline.report.forest_plot.transport_summary: its forest plots are
      embedded in the HTML and linked by file name from the Markdown).
    data_provenance (all optional): synthetic (bool), sha256, file, n_rows, n_dev, n_test, seed,
      n_rows_rejected, description.
    Missing entries show as "not recorded". The HTML is self-contained and escaped.
    """
    ev = evidence
    text = prose("model_card")
    d = ev.discrimination[MODEL]
    synthetic = bool(data_provenance.get("synthetic"))
    outcome = s.outcome_text(ev.outcome)
    name = _get(model_info, "name", "icans-risk")
    # The card is written before the registry numbers the version that will carry it: a marker that
    # `with_version` replaces in the run's copy once it is registered (pipeline.tracking.runs).
    version = _get(model_info, "version", PENDING_VERSION)
    params = model_info.get("params")
    thresholds = model_info.get("thresholds") or {r["name"]: r["threshold"] for r in ev.thresholds.to_dict(orient="records")}

    details = ("table", ["item", "value"], [
        ["name", name], ["registered version", version], ["MLflow run id", _get(model_info, "run_id")],
        ["date", _get(model_info, "trained_at")],
        ["model type", _get(model_info, "kind")],
        ["hyper-parameters", ", ".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, Mapping) else _get(model_info, "params")],
        ["calibration", _get(model_info, "calibration", "Platt scaling on out-of-fold margins of the development data")],
        ["risk-group thresholds", ", ".join(f"{k} {num(v, 4)}" for k, v in thresholds.items()) or "not recorded"],
        ["data contract version", _get(model_info, "contract_version")],
        ["code version (git commit)", _get(model_info, "git_commit")],
        ["outcome", outcome],
    ])
    source = ("synthetic cohort from pipeline.data.synthetic.generate_cohort"
              + (f" (seed {data_provenance['seed']})" if data_provenance.get("seed") is not None else "")
              if synthetic else f"cohort file {_get(data_provenance, 'file')}")
    provenance_rows = [
        ["source", source],
        ["file sha256", _get(data_provenance, "sha256")],
        ["rows used", _get(data_provenance, "n_rows")],
        ["rows rejected by the contract", _get(data_provenance, "n_rows_rejected")],
        ["development / held-out patients", f"{_get(data_provenance, 'n_dev')} / {_get(data_provenance, 'n_test', str(d['n']))}"],
    ]
    if data_provenance.get("description"):
        provenance_rows.append(["description", str(data_provenance["description"])])

    subgroup_lines = []
    for r in ev.subgroups.to_dict(orient="records"):
        flag = f" [SMALL: {r['small_reason']}]" if r["small"] else ""
        subgroup_lines.append(f"{r['group_label']} {r['level_label']}: n = {r['n']}, events = {r['events']}, "
                              f"AUROC {ci(r, 'auroc')}, CITL {rounded('calibration_in_the_large', r['calibration_in_the_large'])}{flag}")

    gate = model_info.get("gate") or {}
    if gate.get("rule"):  # the gate's rule, stated once (pipeline.train.gate.GATE_RULE)
        details[2].append(["quality gate rule", str(gate["rule"])])
    if gate and not gate.get("passed", True):
        details[2].append(["quality gate", f"FAILED: {gate.get('reason')}"
                           + ("; registered as champion with ALLOW_UNGATED=1 (ungated)" if gate.get("ungated") else "")])
    caveats = lines(text.caveats(synthetic, ORACLE_COLUMN))
    unstable = warning_text(model_info.get("instability") or {})
    if unstable:
        caveats.insert(0, unstable)
    # the sample-size warning is said once, in "Training data" (sections.sample_size_blocks)
    said_elsewhere = {ev.sample_size.get("warning")} if ev.sample_size is not None else set()
    learning = ([("p", "Learning curve (synthetic):")] + s.learning_curve_blocks(ev, None)[1:2]
                if ev.learning_curve is not None and len(ev.learning_curve) else [])

    sections: list[Section] = [
        ("Model details", [details]),
        ("Intended use", [("p", INTENDED_USE),
                          ("ul", lines(text.intended_use(outcome, _get(model_info, "contract_version", "1"))))]),
        ("Factors", [("p", _factors())]),
        ("Metrics", [("ul", lines(text.metrics(ev.n_boot)))]),
        ("Evaluation data", [s.evaluation_text(ev, d, synthetic)] + s.validation_blocks(ev)),
        ("Training data", [("table", ["item", "value"], provenance_rows)] + s.sample_size_blocks(ev)),
        ("Quantitative analyses", [
            ("ul", s.headline(ev)),
            s.discrimination_table(ev),
            s.calibration_table(ev),
            s.net_benefit_table(ev),
            s.thresholds_table(ev),
            ("p", "Subgroups (held-out set):" if not s.resampled(ev) else "Subgroups (out-of-fold risks):"),
            ("ul", subgroup_lines),
        ] + s.direction_blocks(ev)[1:] + learning + s.instability_blocks(model_info.get("instability"))
          + s.transport_blocks(model_info.get("transport"))),
        ("Ethical considerations", [("ul", lines(text.ethics(synthetic)))]),
        ("Caveats and recommendations", [("ul", caveats)]
         + [("note", n) for n in ev.notes if n not in caveats and n not in said_elsewhere]),
    ]
    title = f"Model card: {name}"
    images = {str(p): base64.b64encode(Path(p).read_bytes()).decode("ascii")
              for p in (model_info.get("transport") or {}).get("plots", {}).values()}
    return to_markdown(title, sections, BANNER), to_html(title, sections, BANNER, images)


PENDING_VERSION = "not yet registered (named in the copy under the run evidence/ folder once registered; GET /v1/model)"


def with_version(document: str, version: str) -> str:
    """A card written before registration, with its registered version in place of the marker."""
    return document.replace(PENDING_VERSION, str(version))


def write_model_card(evidence: Evidence, model_info: Mapping[str, Any], data_provenance: Mapping[str, Any],
                     out_dir: Path) -> tuple[Path, Path]:
    """render_model_card, written to out_dir/model_card.md and out_dir/model_card.html."""
    markdown, page = render_model_card(evidence, model_info, data_provenance)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out_dir / MODEL_CARD_MD, out_dir / MODEL_CARD_HTML
    for plot in (model_info.get("transport") or {}).get("plots", {}).values():  # the Markdown links them by name
        if Path(plot).parent.resolve() != out_dir.resolve():
            shutil.copyfile(plot, out_dir / Path(plot).name)
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path


def warning_text(summary: dict[str, Any]) -> str | None:
    """The model card's warning, when the risks are unstable."""
    if not summary.get("warning"):
        return None
    return (
        f"Individual risks are unstable: across {summary['models']} models developed on bootstrap samples of "
        f"the {summary['n_dev']} development patients, a patient's risk moved by {summary['mape']:.3f} on "
        f"average (MAPE), against a mean risk of {summary['mean_risk']:.3f}, and {summary['group_change']:.0%} "
        "of the time into another risk group. Read each risk with its interval; a larger development cohort "
        "is needed before individual risks can be relied on."
    )
