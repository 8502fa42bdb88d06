"""`icans-risk`: one command for every stage (generate, train, evaluate, score, serve)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from core.contract import DEFAULT_OUTCOME, OUTCOMES

EXIT_INVALID_DATA = 2
EXIT_TRAINING_FAILED = 1
EXIT_NOT_PROMOTED = 3  # registered, but the quality gate kept it from @champion


def _settings(**overrides: object):
    from pydantic import ValidationError

    from core.settings import get_settings

    try:
        return get_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        raise click.ClickException("invalid settings:\n" + "\n".join(lines)) from None


def _data_error(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_INVALID_DATA)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="More logging.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output (a bar on a terminal, a line per stage otherwise).")
def main(verbose: bool, quiet: bool = False) -> None:
    """ICANS risk (research use only; not a medical device; no treatment advice)."""
    from pipeline.tracking import progress

    progress.configure("quiet" if quiet else "auto")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
@click.option("--n", "n", type=click.IntRange(min=10), default=2000, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="CSV or Parquet path.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--consortium", is_flag=True,
              help="Several centres with a 'centre' column (pipeline/data/synthetic_centres.py; --n is ignored).")
def generate(n: int, seed: int, out: Path | None, overwrite: bool, consortium: bool = False) -> None:
    """Write a literature-grounded synthetic cohort (carries p_true, which is never a feature)."""
    from pipeline.data.synthetic import generate_cohort, oracle_auroc
    from pipeline.data.write import write_new, write_synthetic_cohort

    if consortium:  # issue 27
        from pipeline.data.synthetic_centres import generate_consortium

        df = generate_consortium(seed=seed)
        n = len(df)
    else:
        df = generate_cohort(n, seed)
    if out is None:
        path = write_synthetic_cohort(df, _settings().data_dir, n, seed)
    else:
        try:
            path = write_new(df, out, overwrite=overwrite)
        except FileExistsError as exc:
            raise click.ClickException(str(exc)) from None
    prev = df["severe_icans"].mean()
    click.echo(f"{n} patients, severe ICANS {prev:.1%}, oracle AUROC {oracle_auroc(df):.3f}")
    click.echo(str(path))


@main.command()
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Cohort file; default: synthetic.")
@click.option("--outcome", type=click.Choice(sorted(OUTCOMES)), default=DEFAULT_OUTCOME, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--n", "n_patients", type=click.IntRange(min=100), default=None, help="Synthetic cohort size.")
@click.option("--n-iter", type=click.IntRange(min=1), default=None, help="Search configurations per family.")
@click.option("--on-invalid", type=click.Choice(["refuse", "drop"]), default="refuse", show_default=True)
@click.option("--allow-ungated", is_flag=True, default=None,
              help="Register a model that fails the quality gate as champion anyway, tagged ungated.")
@click.option("--promote/--no-promote", "promote", default=None,
              help="--no-promote: register and record the decision, but never move @champion.")
@click.pass_context
def train(ctx, data, outcome, seed, n_patients, n_iter, on_invalid, allow_ungated, promote) -> None:
    """Train, validate and register; move @champion only past the gate and non-inferior to the current one."""
    from pipeline.data.problems import CohortError
    from pipeline.train.run import train as run_training
    from pipeline.train.validation import TrainingRefused

    from pipeline.tracking.liveness import TrainingInterrupted, sigterm_interrupts

    settings = _settings(seed=seed, n_iter=n_iter, outcome=outcome, allow_ungated=allow_ungated, promote=promote)
    try:
        with sigterm_interrupts():
            result = run_training(settings, data=data, outcome=outcome, on_invalid=on_invalid, n_patients=n_patients)
    except (CohortError, TrainingRefused) as exc:
        _data_error(exc)
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: the runs were ended as KILLED
        click.echo("error: training interrupted; its MLflow runs were ended as KILLED", err=True)
        sys.exit(143 if isinstance(exc, TrainingInterrupted) else 130)
    except Exception as exc:  # one line, never a traceback (unless -v); the run keeps the reason
        if ctx.find_root().params.get("verbose"):
            raise
        click.echo(f"error: training failed ({type(exc).__name__}: {exc}); the MLflow run is tagged "
                   "failure_reason; rerun with -v for the traceback", err=True)
        sys.exit(EXIT_TRAINING_FAILED)
    for note in result.notes:
        click.echo(note)
    click.echo("\n".join(result.report_lines()))  # the decision last, in one block
    if not result.promoted and result.reason.startswith("quality gate"):
        sys.exit(EXIT_NOT_PROMOTED)


@main.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The local cohort (CSV or Parquet, the training contract).")
@click.option("--outcome", type=click.Choice(list(OUTCOMES)), default=DEFAULT_OUTCOME, show_default=True)
@click.option("--on-invalid", type=click.Choice(["refuse", "drop"]), default="refuse", show_default=True)
@click.pass_context
def update(ctx, data, outcome, on_invalid) -> None:
    """Validate @champion on a local cohort and register the smallest update it justifies."""
    from pipeline.data.problems import CohortError
    from pipeline.update.run import update as run_update
    from pipeline.update.report import METHOD_TEXT
    from pipeline.train.validation import TrainingRefused

    from pipeline.tracking.liveness import TrainingInterrupted, sigterm_interrupts

    settings = _settings(outcome=outcome)
    try:
        with sigterm_interrupts():
            result = run_update(settings, data=data, outcome=outcome, on_invalid=on_invalid)
    except (CohortError, TrainingRefused) as exc:
        _data_error(exc)
    except KeyboardInterrupt as exc:
        click.echo("error: update interrupted; its MLflow run was ended as KILLED", err=True)
        sys.exit(143 if isinstance(exc, TrainingInterrupted) else 130)
    except Exception as exc:  # one line, never a traceback (unless -v)
        if ctx.find_root().params.get("verbose"):
            raise
        click.echo(f"error: update failed ({type(exc).__name__}: {exc}); rerun with -v for the traceback", err=True)
        sys.exit(EXIT_TRAINING_FAILED)
    s, b, a = result.statistics, result.before, result.after
    click.echo(f"closed test: logistic vs original LR {s['lr_logistic_vs_original']:.2f} "
               f"(p {s['p_logistic_vs_original']:.3g}), logistic vs intercept-only LR "
               f"{s['lr_logistic_vs_intercept']:.2f} (p {s['p_logistic_vs_intercept']:.3g})")
    click.echo(f"chosen: {METHOD_TEXT[result.method]}")
    from core.display import figure

    click.echo(", ".join(f"{label} {figure(k, b[k])} -> {figure(k, a[k])}" for k, label in (
        ("calibration_intercept", "calibration intercept"), ("calibration_slope", "slope"), ("auroc", "AUROC")))
        + f" (local data, run {result.run_id})")
    if result.version:
        verdict = "promoted to @champion" if result.promoted else "NOT promoted"
        click.echo(f"registered v{result.version}, {verdict}: {result.reason}")
    else:
        click.echo(result.reason)


@main.command()
@click.option("--since", default=None, help="Patients first seen at or after this time (ISO date or date-time, UTC by default).")
@click.option("--until", default=None, help="Patients first seen before this time.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
              help="False-alarm probability of the drift tests over the planned horizon of runs.")
@click.option("--horizon-runs", type=click.IntRange(1), default=52, show_default=True,
              help="Runs planned over the horizon (52: a year of weekly runs); each run tests at alpha / this.")
@click.option("--follow-up-days", type=click.FloatRange(0), default=None,
              help="Judge calibration on answers at least this old (default ICANS_MONITOR_FOLLOW_UP_DAYS, 30).")
def monitor(since, until, alpha, horizon_runs, follow_up_days) -> None:
    """Compare the served version's audited answers with its development data (an MLflow run)."""
    from cli.admin import parse_since

    try:
        start = parse_since(since) if since else None
        end = parse_since(until) if until else None
    except click.BadParameter as exc:
        raise click.ClickException(f"--since/--until: {exc.message}") from None
    from pipeline.monitor.run import MonitoringError

    try:
        result = _monitor_once(_settings(), start, end, alpha, horizon_runs=horizon_runs,
                               follow_up_days=follow_up_days)
    except MonitoringError as exc:
        _data_error(exc)
    click.echo(f"monitoring run {result.run_id}: {result.model}, {result.n} patients "
               f"({result.n_answers} audited answers; repeats count once)")
    click.echo("alarms: " + (", ".join(result.alarms) if result.alarms else "none")
               + f" (drift: alpha {alpha} over {horizon_runs} runs, {alpha / horizon_runs:.2g} this run); "
               "report: monitoring_report.html in the run's artifacts")
    click.echo(f"verdict: {result.verdict['verdict']}: {result.verdict['text']}")


def _monitor_once(settings, since=None, until=None, alpha: float = 0.05, *, horizon_runs: int | None = None,
                  follow_up_days: float | None = None, all_outcomes: bool = False):
    """One monitoring run over the service's store; its summary is kept in the store for the service.
    Every audit row is read (not only the window's) so a patient first seen earlier is not counted again."""
    from pipeline.monitor.run import monitor as run_monitor
    from serving import monitoring_runs
    from serving.app import open_store
    from serving.outcomes import labelled_answers

    store = open_store(settings, sync="full")
    try:
        rows = (row for chunk in store.iter_audit(None) for row in chunk)
        result = run_monitor(settings, rows, since=since, until=until, alpha=alpha,
                             labelled=labelled_answers(store, settings.outcome), horizon_runs=horizon_runs,
                             follow_up_days=follow_up_days, all_outcomes=all_outcomes)
        monitoring_runs.record(store, result.model_name, result.model_version, result.run_id, result.summary())
        return result
    finally:
        store.close()


def _monitor_on_schedule(settings, interval_s: float, stop) -> None:
    """The schedule `icans-risk serve` runs when ICANS_MONITOR_INTERVAL_S > 0, every `interval_s` in a
    daemon thread of the serving command (not of a worker): drift on the patients first seen in the
    last interval; calibration on every answer of the version whose follow-up has ended
    (ICANS_MONITOR_FOLLOW_UP_DAYS), since the interval is far shorter than the time outcomes take."""
    import logging
    from datetime import UTC, datetime, timedelta

    from pipeline.monitor.run import MonitoringError

    log = logging.getLogger("icans_risk.monitor")
    while not stop.wait(interval_s):
        since = datetime.now(UTC) - timedelta(seconds=interval_s)
        try:
            result = _monitor_once(settings, since=since, all_outcomes=True)
            log.warning("monitoring run %s: %s; alarms: %s", result.run_id, result.verdict["verdict"],
                        ", ".join(result.alarms) or "none")
        except MonitoringError as exc:
            log.warning("monitoring skipped: %s", exc)
        except Exception as exc:  # the schedule never stops the service
            log.error("monitoring failed: %s", type(exc).__name__)


@main.group()
def runs() -> None:
    """Housekeeping of the MLflow runs."""


@runs.command("sweep")
def runs_sweep() -> None:
    """Mark runs of trainings whose process died as KILLED; make version tags agree with the alias."""
    from mlflow import MlflowClient

    from pipeline.tracking.liveness import sweep
    from pipeline.tracking.runs import setup_mlflow

    settings = _settings()
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment_id = setup_mlflow(settings, settings.experiment)
    dead = sweep(client, experiment_id, settings.stale_run_s, settings.champion_alias)
    click.echo(f"{len(dead)} run(s) marked KILLED" + (f": {', '.join(dead)}" if dead else ""))


@main.command()
@click.option("--data", type=click.Path(path_type=Path), default=None, help="External cohort; default: a fresh synthetic one.")
@click.option("--outcome", type=click.Choice(sorted(OUTCOMES)), default=DEFAULT_OUTCOME, show_default=True)
@click.option("--on-invalid", type=click.Choice(["refuse", "drop"]), default="refuse", show_default=True)
@click.option("--summary", "summary", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write only the shareable centre summary (estimates, SEs, binned counts; no rows) to this JSON.")
@click.option("--centre", default=None, help="The centre's code, when the file has no 'centre' column (--summary).")
@click.option("--overwrite", is_flag=True, help="Replace --summary if it exists.")
def evaluate(data, outcome, on_invalid, summary=None, centre=None, overwrite=False) -> None:
    """Validate the served model on a cohort it has never seen (new MLflow run, no retraining)."""
    from pipeline.evaluate import evaluate as run_evaluation
    from pipeline.data.problems import CohortError
    from models.registry import ModelNotFound

    settings = _settings(outcome=outcome)
    if summary is not None:  # issue 27: federated evaluation, nothing row-level leaves the centre
        _centre_summary(settings, data, outcome, on_invalid, summary, centre, overwrite)
        return
    try:
        result = run_evaluation(settings, data=data, outcome=outcome, on_invalid=on_invalid)
    except (CohortError, ValueError) as exc:
        _data_error(exc)
    except ModelNotFound as exc:
        raise click.ClickException(f"{exc}; train one first (make train)") from None
    click.echo(f"run {result['run_id']}: {result['model']}")
    from core.display import figure

    m = result["metrics"]
    click.echo(f"external AUROC {figure('auroc', m['auroc'])}, calibration slope "
               f"{figure('calibration_slope', m['calibration_slope'])}, Brier {figure('brier', m['brier'])}")


def _centre_summary(settings, data, outcome, on_invalid, out, centre, overwrite) -> None:
    from pipeline.federated import SummaryError, summary_of_file, write_summary
    from pipeline.data.problems import CohortError
    from models.registry import ModelNotFound

    if data is None:
        raise click.ClickException("--summary needs --data: the centre's own cohort file")
    try:
        doc = summary_of_file(settings, data, outcome, on_invalid, centre)
        write_summary(doc, out, overwrite=overwrite)
    except (CohortError, SummaryError) as exc:
        _data_error(exc)
    except ModelNotFound as exc:
        raise click.ClickException(f"{exc}; train one first (make train)") from None
    shared = sum(1 for e in doc["centres"] if e.get("estimable"))
    click.echo(f"summary of {len(doc['centres'])} centre(s) ({shared} with estimates) for "
               f"{doc['model']['name']} v{doc['model']['version']} -> {out} (no patient rows)")


@main.command("meta")
@click.argument("summaries", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--version", "version", default=None, help="Refuse summaries of any other model version.")
def meta_command(summaries, version) -> None:
    """Pool centres' summaries (icans-risk evaluate --summary) by random-effects meta-analysis."""
    from pipeline.federated import SummaryError, meta

    try:
        result = meta(list(summaries), _settings(), version=version)
    except SummaryError as exc:
        _data_error(exc)
    click.echo(f"meta-analysis run {result['run_id']}: {result['model']['name']} v{result['model']['version']}, "
               f"{len(result['centres'])} centres")
    from core.display import figure

    for m, p in result["pooled"].items():
        click.echo(f"{m}: {figure(m, p.estimate)} (95% CI {figure(m, p.ci_low)} to {figure(m, p.ci_high)}; 95% "
                   f"prediction interval {figure(m, p.pi_low)} to {figure(m, p.pi_high)}; tau2 {p.tau2:.4f}, "
                   f"I2 {p.i2:.0f}%)")


@main.command("iecv")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="A cohort file with a 'centre' column.")
@click.option("--outcome", type=click.Choice(sorted(OUTCOMES)), default=DEFAULT_OUTCOME, show_default=True)
@click.option("--on-invalid", type=click.Choice(["refuse", "drop"]), default="refuse", show_default=True)
def iecv_command(data, outcome, on_invalid) -> None:
    """Internal-external cross-validation by centre alone (its own MLflow run; no model registered)."""
    from pipeline.train.iecv import IECVRefused, run_standalone
    from pipeline.data.problems import CohortError

    try:
        result, run_id = run_standalone(_settings(outcome=outcome), data, outcome, on_invalid)
    except (CohortError, IECVRefused) as exc:
        _data_error(exc)
    click.echo(f"IECV run {run_id}: {len(result.rows)} centres, {result.seconds:.0f} s")
    click.echo(result.transport_sentence())


@main.command()
@click.option("--data", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--on-invalid", type=click.Choice(["refuse", "drop"]), default="refuse", show_default=True)
@click.option("--waterfalls", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also draw each patient's explanation (waterfall) into this directory; about 0.1 s a patient.")
@click.option("--waterfall-format", type=click.Choice(["svg", "png"]), default="svg", show_default=True)
def score(data, out, overwrite, on_invalid, waterfalls, waterfall_format) -> None:
    """Score a cohort file offline with the served model, with one shap_<feature> column each."""
    from pipeline.data.problems import CohortError
    from models.registry import ModelNotFound
    from pipeline.score import score_file

    settings = _settings()
    try:
        n, model, rejected = score_file(settings, data, out, overwrite=overwrite, on_invalid=on_invalid,
                                        waterfalls=waterfalls, waterfall_format=waterfall_format)
    except (CohortError, ValueError) as exc:
        _data_error(exc)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    except ModelNotFound as exc:
        raise click.ClickException(f"{exc}; train one first (make train)") from None
    if rejected:
        click.echo(f"warning: {rejected} invalid rows were not scored (--on-invalid drop)", err=True)
    click.echo(f"scored {n} patients with {model} -> {out}" + (f" (waterfalls in {waterfalls})" if waterfalls else ""))


@main.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--train-if-missing", is_flag=True, help="Train a champion on the default cohort if none exists.")
def serve(host, port, workers, train_if_missing) -> None:
    """Serve the champion over HTTP (FastAPI + uvicorn)."""
    import uvicorn

    settings = _settings()
    if train_if_missing:
        _ensure_champion(settings)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if settings.monitor_interval_s > 0:
        import threading

        stop = threading.Event()
        threading.Thread(target=_monitor_on_schedule, args=(settings, settings.monitor_interval_s, stop),
                         name="monitor-schedule", daemon=True).start()
    from serving.http_guard import GuardedHttpToolsProtocol

    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level="info",
        access_log=settings.access_log,  # requests are counted in /metrics and the audit trail
        proxy_headers=False,
        # limits at the edge: head size, field count, request line and the time to send head and
        # body (ICANS_HTTP_*), enforced by a guarded httptools protocol; connections per worker and
        # idle keep-alive by uvicorn itself
        http=GuardedHttpToolsProtocol,
        limit_concurrency=settings.http_limit_concurrency,
        timeout_keep_alive=settings.http_timeout_keep_alive_s,
    )


def _ensure_champion(settings) -> None:
    from models.registry import resolve_direct

    # the usual case, a champion in a local registry: found without importing mlflow or the
    # training stack, which would otherwise stay in this process (with --workers 1, the worker)
    direct = resolve_direct(settings.tracking_uri, settings.resolved_model_uri)
    if direct is not None:
        click.echo(f"serving {direct.name} v{direct.version} ({settings.resolved_model_uri})")
        return
    from mlflow import MlflowClient

    from models.registry import ModelNotFound, resolve
    from pipeline.tracking.runs import setup_mlflow
    from pipeline.train.run import train as run_training

    setup_mlflow(settings, settings.experiment)
    try:
        resolved = resolve(MlflowClient(), settings.resolved_model_uri)
        click.echo(f"serving {resolved.name} v{resolved.version} ({settings.resolved_model_uri})")
    except ModelNotFound:
        if settings.model_uri:
            raise click.ClickException(f"no model at {settings.model_uri}") from None
        click.echo("no champion yet: training one on the default synthetic cohort first ...")
        result = run_training(settings)
        click.echo(f"trained {result.model_name} v{result.version}: {result.reason}")
        if not result.promoted:
            raise click.ClickException(f"the new model was not made champion ({result.reason}); nothing to serve")


def _store():
    from serving.app import open_store

    return open_store(_settings(), sync="full")  # key changes always reach the disk before we report them


def _attach_admin_groups() -> None:
    from cli.admin import make_groups

    keys, audit, outcomes = make_groups(_store)
    main.add_command(keys)
    main.add_command(audit)
    main.add_command(outcomes)


_attach_admin_groups()


@main.command("contract")
def contract_table() -> None:
    """Print the data contract as a Markdown table (the README's table)."""
    from core.contract import markdown_table

    click.echo(markdown_table())


if __name__ == "__main__":
    main()
