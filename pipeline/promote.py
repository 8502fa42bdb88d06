"""Promotion: the champion alias moves last, under a lock, and never to a model clearly worse.

A model refused by the quality gate is registered but not promoted, unless ALLOW_UNGATED=1 and
no champion exists (then it is served, tagged as ungated). The comparison is with whatever is
champion when the lock is held: another training may have promoted its model meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from mlflow import MlflowClient

from pipeline.registry import champion, load_bundle, promotion_lock
from pipeline.runs import now_text, reconcile_tags
from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    promoted: bool
    reason: str
    champion_auroc: float | None


def promote(
    client: MlflowClient,
    settings: Settings,
    name: str,
    version: str,
    compare: Callable[[Any], dict[str, float]],
    new_auroc: float,
) -> tuple[bool, str, float | None]:
    """Move the alias unless the new version is clearly worse than the champion on the same estimate.

    "Clearly": the 95% paired-bootstrap interval of AUROC(new) - AUROC(champion) lies wholly below 0.
    Within the noise the newer model, fitted on the newer data, is promoted and the reason says so.
    """
    current = champion(client, name, settings.champion_alias)
    champ_auroc = None
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
            hi = d["ci_high"] if np.isfinite(d["ci_high"]) else d["difference"]
            promoted = bool(hi >= 0)
            ci = (f" (95% CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f})" if np.isfinite(d["ci_low"]) else "")
            verdict = ("not clearly worse: promoted" if promoted else "clearly worse: the champion stays")
            reason = (f"AUROC {new_auroc:.4f} vs champion v{current.version}'s {champ_auroc:.4f}, difference "
                      f"{d['difference']:+.3f}{ci} {d.get('basis', 'on the same patients')}: {verdict}")
    if promoted:
        client.set_registered_model_alias(name, settings.champion_alias, version)
    client.set_model_version_tag(name, version, "promotion", "champion" if promoted else "not promoted")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    client.set_model_version_tag(name, version, "promotion_time", now_text())
    if promoted:  # the version that lost the alias says so
        reconcile_tags(client, name, settings.champion_alias)
    return promoted, reason, champ_auroc


def promote_if_allowed(
    client: MlflowClient, settings: Settings, model_name: str, version: str, gate_ok: bool, gate_reason: str,
    ungated: bool, compare: Callable[[Any], dict[str, float]], new_auroc: float,
) -> Verdict:
    """The gate's verdict, then (if it allows) the champion comparison; the version's tags say which."""
    with promotion_lock(settings.lock_url or settings.tracking_uri, settings.data_dir, model_name):
        if gate_ok or (ungated and champion(client, model_name, settings.champion_alias) is None):
            promoted, reason, champ_auroc = promote(client, settings, model_name, version, compare, new_auroc)
            if ungated:
                reason = f"UNGATED (quality gate: {gate_reason}; ALLOW_UNGATED=1): {reason}"
                client.set_model_version_tag(model_name, version, "promotion_reason", reason)
        else:
            promoted, reason, champ_auroc = False, f"quality gate: {gate_reason}", None
            if settings.allow_ungated and champion(client, model_name, settings.champion_alias) is not None:
                reason += ". ALLOW_UNGATED applies only while no champion exists; the champion stays"
            elif champion(client, model_name, settings.champion_alias) is None:
                reason += (". No champion exists: to score with this model anyway, retrain with ALLOW_UNGATED=1 "
                           "(make train ... ALLOW_UNGATED=1); it is then served tagged as ungated")
            client.set_model_version_tag(model_name, version, "promotion", "not promoted")
            client.set_model_version_tag(model_name, version, "promotion_reason", reason)
            client.set_model_version_tag(model_name, version, "promotion_time", now_text())
    return Verdict(promoted, reason, champ_auroc)
