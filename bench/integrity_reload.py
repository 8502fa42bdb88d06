"""What a tampered and an incomplete registered bundle do on a live reload (issue 25, finding 8).

    python -m bench.integrity_reload [--root DIR]

Trains one model (the tests' small settings) into DIR, serves its champion in a `ModelState`, then
registers two copies of the champion's artifacts as new versions (with the champion's tags, as a
copy made on the artifact store would have): `bundle.json` with calibration_intercept + 3, and the
bundle without `instability.npz`. For each it moves @champion, reloads, and prints the reload's
result and reason and what the served model answers for the contract's example patient. Run from a
checkout: its code is what is measured (main serves both; this branch refuses both).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _answer(state: Any) -> dict[str, Any]:
    from core.contract import example_request

    a = state.predictor.predict([example_request()])[0]
    unc = a["uncertainty"]
    return {"version": a["model"]["version"], "risk": round(a["risk"], 3),
            "interval": None if unc is None else [round(v, 3) for v in unc["interval"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None)
    args = ap.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="houtcomes_integrity_"))
    from mlflow import MlflowClient

    import mlflow
    from models.registry import resolve_direct
    from pipeline.train.run import train
    from serving.state import ModelState, load_predictor
    from tests.conftest import make_settings

    settings = make_settings(root)
    result = train(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    state = ModelState()
    state.set_ready(load_predictor(settings))
    out: dict[str, Any] = {"served": _answer(state)}
    champion = client.get_model_version_by_alias(result.model_name, "champion")
    location = resolve_direct(settings.tracking_uri, settings.resolved_model_uri)
    assert location is not None and location.location is not None
    for case in ("tampered", "incomplete"):
        dst = root / case
        shutil.copytree(location.location, dst)
        bundle = dst / "artifacts" / "bundle"
        if case == "tampered":
            meta = json.loads((bundle / "bundle.json").read_text())
            meta["calibration_intercept"] += 3.0
            (bundle / "bundle.json").write_text(json.dumps(meta, indent=2))
        else:
            (bundle / "instability.npz").unlink()
        v = client.create_model_version(result.model_name, source=str(dst), run_id=champion.run_id,
                                        tags=dict(champion.tags))
        client.set_registered_model_alias(result.model_name, "champion", v.version)
        reload = state.reload(settings)
        out[case] = {"version": v.version, "reload": reload["result"], "reason": reload["reason"],
                     "then_serving": _answer(state)}
        client.set_registered_model_alias(result.model_name, "champion", champion.version)
        state.reload(settings)
    print(json.dumps(out))
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
