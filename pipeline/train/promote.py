"""Promotion: the champion alias moves last, under a lock, and only to a model non-inferior to the champion.

A model refused by the quality gate is registered but not promoted, unless ALLOW_UNGATED=1 and
no champion exists (then it is served, tagged as ungated). The comparison is with whatever is
champion when the lock is held: another training may have promoted its model meanwhile.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import mlflow
import numpy as np
from mlflow import MlflowClient

from core import display
from pipeline.train.gate import PROMOTION_MARGINS
from models.registry import champion, load_bundle, promotion_lock
from pipeline.tracking.liveness import now_text, reconcile_tags
from core.settings import Settings
from pipeline.train.training_run import GateVerdict

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    promoted: bool
    reason: str
    champion_auroc: float | None
    comparison: dict[str, Any] = field(default_factory=dict)  # the champion comparison's evidence, if any
    alias_held: bool = False  # PROMOTE=no: the decision was made but the alias not moved


def _tag_version(client: MlflowClient, name: str, version: str, promoted: bool, reason: str,
                 comparison: dict[str, Any] | None = None, held: bool = False) -> None:
    """The decision, its reason, the margins it used and each criterion's figures, on the version."""
    status = "champion" if promoted else ("not promoted (PROMOTE=no)" if held else "not promoted")
    client.set_model_version_tag(name, version, "promotion", status)
    client.set_model_version_tag(name, version, "promotion_reason", reason[:5000])
    client.set_model_version_tag(name, version, "promotion_time", now_text())
    client.set_model_version_tag(name, version, "promotion_margins", json.dumps(PROMOTION_MARGINS))
    for key, d in ((comparison or {}).get("criteria") or {}).items():
        client.set_model_version_tag(name, version, f"noninferiority_{key}",
                                     f"{d['difference']:+.4f} ({d['ci_low']:+.4f} to {d['ci_high']:+.4f})")


def gate_verdict(client: MlflowClient, settings: Settings, model_name: str, ok: bool, reason: str) -> GateVerdict:
    """The gate's answer, and whether a refused model would be served ungated (ALLOW_UNGATED=1 and no
    champion now). Recorded on the run and the version before registration; `promote_if_allowed`
    asks again under the lock, and that answer decides."""
    ungated = not ok and settings.allow_ungated and champion(client, model_name, settings.champion_alias) is None
    return GateVerdict(ok, reason, ungated)


_ASK = object()  # promote's `current` when the caller has not asked who is champion


def promote(
    client: MlflowClient,
    settings: Settings,
    name: str,
    version: str,
    compare: Callable[[Any], dict[str, Any]],
    new_auroc: float,
    details: dict[str, Any] | None = None,
    current: Any = _ASK,
    reason_prefix: str = "",
) -> tuple[bool, str, float | None]:
    """Move the alias when the new version is non-inferior to the champion on the same patients.

    A training's `compare` refits the champion's configuration in the challenger's folds and
    returns `criteria` judged on `PROMOTION_MARGINS` (`non_inferior`, `lines`); the local update's
    `compare` gives a paired AUROC difference, and there "clearly worse" (the 95% interval wholly
    below 0) keeps the champion. With `settings.promote` off the decision is made and recorded but
    the alias never moves. `details` (if given) receives the comparison. `current`: the champion
    version (or None) as the caller found it under the promotion lock; asked here otherwise.
    `reason_prefix` heads the recorded reason (an ungated model says so).
    """
    if current is _ASK:
        current = champion(client, name, settings.champion_alias)
    champ_auroc = None
    d: dict[str, Any] = {}
    if current is None:
        promoted, reason = True, "no champion yet"
    else:
        try:
            d = compare(load_bundle(current))
        except Exception as exc:  # an unloadable champion is replaced, and the reason is kept
            log.warning("current champion v%s could not be scored: %s", current.version, exc)
            promoted, reason = True, f"current champion v{current.version} could not be scored"
        else:
            champ_auroc = d["champion_auroc"]
            if "criteria" in d:
                promoted = bool(d["non_inferior"])
                verdict = "non-inferior on every criterion: promoted" if promoted else (
                    "not shown non-inferior: the champion stays")
                reason = (f"against champion v{current.version}, {d['basis']}: " + "; ".join(d["lines"])
                          + f". {verdict}")
            else:
                hi = d["ci_high"] if np.isfinite(d["ci_high"]) else d["difference"]
                promoted = bool(hi >= 0)
                ci = (f" (95% CI {display.figure('auroc', d['ci_low'], True)} to "
                      f"{display.figure('auroc', d['ci_high'], True)})" if np.isfinite(d["ci_low"]) else "")
                verdict = ("not clearly worse: promoted" if promoted else "clearly worse: the champion stays")
                reason = (f"AUROC {display.figure('auroc', new_auroc)} vs champion v{current.version}'s "
                          f"{display.figure('auroc', champ_auroc)}, difference {display.figure('auroc', d['difference'], True)}"
                          f"{ci} {d.get('basis', 'on the same patients')}: {verdict}")
    held = promoted and not settings.promote
    if held:
        promoted, reason = False, f"PROMOTE=no: the alias was not moved (it would have been: {reason})"
    elif not settings.promote:
        reason = f"PROMOTE=no (and it would not have been promoted: {reason})"
    reason = reason_prefix + reason
    if promoted:
        client.set_registered_model_alias(name, settings.champion_alias, version)
    _tag_version(client, name, version, promoted, reason, d, held)
    if promoted:  # the version that lost the alias says so
        reconcile_tags(client, name, settings.champion_alias)
    if details is not None:
        details.update(d)
        details["alias_held"] = held
    return promoted, reason, champ_auroc


def promote_if_allowed(
    client: MlflowClient, settings: Settings, model_name: str, version: str, gate: GateVerdict,
    compare: Callable[[Any], dict[str, Any]], new_auroc: float,
) -> Verdict:
    """The gate's verdict, then (if it allows) the champion comparison; the version's tags say which.

    "Is there a champion?" is asked once, here, under the lock: another training may have
    promoted its model since this one started.
    """
    details: dict[str, Any] = {}
    gate_reason = gate.reason
    with promotion_lock(settings.lock_url or settings.tracking_uri, settings.data_dir, model_name):
        current = champion(client, model_name, settings.champion_alias)
        if gate.ok or (gate.ungated and current is None):
            prefix = f"UNGATED (quality gate: {gate_reason}; ALLOW_UNGATED=1): " if gate.ungated else ""
            promoted, reason, champ_auroc = promote(client, settings, model_name, version, compare, new_auroc, details,
                                                    current=current, reason_prefix=prefix)
        else:
            promoted, reason, champ_auroc = False, f"quality gate: {gate_reason}", None
            if settings.allow_ungated and current is not None:
                reason += ". ALLOW_UNGATED applies only while no champion exists; the champion stays"
            elif current is None and settings.promote:
                reason += (". No champion exists: to score with this model anyway, retrain with ALLOW_UNGATED=1 "
                           "(make train ... ALLOW_UNGATED=1); it is then served tagged as ungated")
            _tag_version(client, model_name, version, False, reason)
    return Verdict(promoted, reason, champ_auroc, details, bool(details.get("alias_held")))


def log_verdict(verdict: Verdict) -> None:
    """The promotion's block on the training's run (the version's is `_tag_version`'s): the decision,
    its reason and margins, and each non-inferiority criterion's difference and interval."""
    if verdict.champion_auroc is not None:  # the champion's configuration, out of fold on these patients
        mlflow.log_metric("champion_validated_auroc", verdict.champion_auroc)
    mlflow.set_tags({"promoted": str(verdict.promoted).lower(), "promotion_reason": verdict.reason[:5000],
                     "promotion_margins": json.dumps(PROMOTION_MARGINS),
                     "promotion_decision": ("promoted" if verdict.promoted else
                                            "held (PROMOTE=no)" if verdict.alias_held else "not promoted")})
    for key, d in (verdict.comparison.get("criteria") or {}).items():
        mlflow.log_metrics({f"noninferiority_{key}_difference": d["difference"],
                            f"noninferiority_{key}_ci_low": d["ci_low"], f"noninferiority_{key}_ci_high": d["ci_high"]})
