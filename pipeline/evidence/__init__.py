"""Validation evidence for one model on one held-out (or external) set, as TRIPOD+AI asks for it.

Pure functions on arrays and data frames: no MLflow, no plotting, no files. `build_evidence`
computes everything once and returns an `Evidence`; `Evidence.flat_metrics()` gives the MLflow
metric names (stable across runs) and `pipeline.report` draws and renders it.

One module per thing measured (the public names are re-exported here):
- `discrimination`: AUROC and AUPRC with percentile-bootstrap intervals, and the paired bootstrap
  difference model - comparator on the SAME resamples (`pipeline.stats.bootstrap`);
- `calibration`: calibration-in-the-large, logistic recalibration slope and intercept
  (`pipeline.stats.metrics.calibration_slope_intercept`), the integrated calibration index ICI / E50 /
  E90 / Emax (Austin & Steyerberg, Stat Med 2019;38:4051), Brier and scaled Brier (Steyerberg et
  al., Epidemiology 2010;21:128), with bootstrap intervals; `smoothing`: the loess behind them;
  `calibration_curve`: the data of the calibration plot;
- `decision`: decision curve analysis (Vickers & Elkin, Med Decis Making 2006;26:565);
- `by_subgroup`: subgroup performance, with small subgroups flagged and never dropped;
- `min_sample_size`: minimum sample size for model development (Riley et al., Stat Med
  2019;38:1276 and BMJ 2020;368:m441; the `pmsampsize` criteria 1-3 for a binary outcome);
- `thresholds`: sensitivity / specificity / PPV / NPV at the stored risk-group thresholds;
- `training_size`: the learning curve's summary (the curve trains models:
  `pipeline.train.learning_curve`);
- `record`: the `Evidence` record, its metric names and JSON; `build`: `build_evidence`;
  `names`: the comparators' keys and metric-name fragments.
"""

from __future__ import annotations

from pipeline.stats.bootstrap import ALPHA, auprc_replicates
from pipeline.evidence.build import build_evidence
from pipeline.evidence.by_subgroup import (
    DEFAULT_SUBGROUPS,
    SMALL_SUBGROUP_EVENTS,
    SMALL_SUBGROUP_N,
    SubgroupSpec,
    subgroups,
)
from pipeline.evidence.calibration import calibration_intervals, calibration_summary
from pipeline.evidence.calibration_curve import calibration_curve_data
from pipeline.evidence.decision import DEFAULT_THRESHOLDS, NET_BENEFIT_REPORTED, decision_curve, net_benefit
from pipeline.evidence.discrimination import discrimination_with_ci, paired_difference
from pipeline.evidence.min_sample_size import ANTICIPATED_C, cox_snell_r2_from_c, max_cox_snell_r2, sample_size
from pipeline.evidence.names import EASIX, M_EASIX, MODEL, ORACLE, TREAT_ALL, TREAT_NONE, safe_name
from pipeline.evidence.record import Evidence
from pipeline.evidence.smoothing import loess, smoothed_observed
from pipeline.evidence.thresholds import risk_group_table, thresholds_table
from pipeline.evidence.training_size import learning_curve_summary

__all__ = [
    "ALPHA", "ANTICIPATED_C", "DEFAULT_SUBGROUPS", "DEFAULT_THRESHOLDS", "EASIX", 
"M_EASIX", "MODEL", "NET_BENEFIT_REPORTED", "ORACLE",
    "SMALL_SUBGROUP_EVENTS", "SMALL_SUBGROUP_N", "TREAT_ALL", "TREAT_NONE", "Evidence", 
    "SubgroupSpec", "auprc_replicates", "build_evidence", "calibration_curve_data", "calibration_intervals",
    "calibration_summary", "cox_snell_r2_from_c", "decision_curve", 
    "discrimination_with_ci", "learning_curve_summary", "loess", "max_cox_snell_r2",
    "net_benefit", "paired_difference", "risk_group_table", "safe_name", "sample_size",
    "smoothed_observed", "subgroups", "thresholds_table",
]
