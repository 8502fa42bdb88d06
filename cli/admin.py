"""`icans-risk keys ...`, `icans-risk audit ...` and `icans-risk outcomes import`: the service store.

`make_groups(store_factory)` returns the three click groups; the main command attaches them and
supplies the factory (settings are read only when a command runs). Every command migrates the
store first, so they work on a fresh clone before the service has ever started.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from serving.scopes import SCOPES  # no SQLAlchemy behind it: cheap at startup

if TYPE_CHECKING:  # the store (and SQLAlchemy) is imported only when a command runs
    from serving.store import KeyRecord, Store


def parse_since(value: str) -> datetime:
    """An ISO date (midnight UTC) or datetime (naive = UTC) as an aware UTC datetime."""
    text = value.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO date or datetime (e.g. 2026-05-01 or 2026-05-01T08:30:00Z)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class _Since(click.ParamType):
    name = "ISO-DATE-OR-DATETIME"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime):
            return value
        try:
            return parse_since(value)
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


def _describe(exc: BaseException) -> str:
    """One line, without SQL statements or bound values."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def make_groups(store_factory: Callable[[], Store]) -> tuple[click.Group, click.Group, click.Group]:
    """(keys, audit, outcomes) click groups over the store that `store_factory` opens when a command runs."""

    @contextmanager
    def opened() -> Iterator[Store]:
        import sqlalchemy.exc

        store = store_factory()
        try:
            try:
                store.migrate()
            except sqlalchemy.exc.SQLAlchemyError as exc:
                raise click.ClickException(f"cannot open the store at {store.safe_url}: {_describe(exc)}") from None
            try:
                yield store
            except sqlalchemy.exc.SQLAlchemyError as exc:
                raise click.ClickException(f"store error ({store.safe_url}): {_describe(exc)}") from None
        finally:
            store.close()

    @click.group("keys")
    def keys() -> None:
        """API keys of client systems (bearer tokens; only salted hashes are stored)."""

    @keys.command("create")
    @click.option("--client", required=True, help="Name of the client system, e.g. ehr-ward-3.")
    @click.option("--scope", type=click.Choice(SCOPES), default="score", show_default=True,
                  help="score: scoring endpoints; outcomes: POST /v1/outcomes; admin: everything.")
    def create(client: str, scope: str) -> None:
        """Create a key; its token is printed once, alone on the last line."""
        with opened() as store:
            try:
                record, token = store.create_key(client, scope)  # type: ignore[arg-type]
            except ValueError as exc:
                raise click.ClickException(str(exc)) from None
        click.echo(
            f"created key {record.key_id} for client {record.client!r} (scope {record.scope}); "
            "the token below is shown once and cannot be recovered:"
        )
        click.echo(token)

    @keys.command("revoke")
    @click.argument("key_id")
    def revoke(key_id: str) -> None:
        """Revoke a key (the service refuses it within seconds, without a restart)."""
        with opened() as store:
            try:
                record = store.revoke_key(key_id)
            except KeyError:
                raise click.ClickException(f"no key with id {key_id!r} (see `icans-risk keys list`)") from None
        click.echo(f"revoked key {record.key_id} of client {record.client!r} at {_when(record.revoked_at)}")

    @keys.command("list")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def list_(as_json: bool) -> None:
        """Every key: id, client, scope, created, revoked (never a secret)."""
        with opened() as store:
            records = store.list_keys()
        if as_json:
            for r in records:
                click.echo(json.dumps(_as_dict(r)))
            return
        if not records:
            click.echo("no keys (create one with `icans-risk keys create --client NAME`)")
            return
        rows = [("KEY_ID", "CLIENT", "SCOPE", "CREATED", "REVOKED")]
        rows += [(r.key_id, r.client, r.scope, _when(r.created_at), _when(r.revoked_at)) for r in records]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())

    @click.group("audit")
    def audit() -> None:
        """The append-only audit trail of scoring requests."""

    @audit.command("export")
    @click.option("--since", type=_Since(), default=None,
                  help="Records at or after this time (UTC unless an offset is given); default: all.")
    @click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
                  help="New file to write (never overwritten).")
    @click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
                  help="Default: parquet for a .parquet file, otherwise csv.")
    def export(since: datetime | None, out: Path, fmt: str | None) -> None:
        """Write audit records as CSV or Parquet for monitoring and review."""
        fmt = fmt or ("parquet" if out.suffix.lower() in (".parquet", ".pq") else "csv")
        if out.exists():
            raise click.ClickException(f"{out} exists; refusing to overwrite it")
        with opened() as store:
            try:
                n = store.export(since, out, fmt)  # type: ignore[arg-type]
            except (FileExistsError, FileNotFoundError) as exc:
                raise click.ClickException(str(exc)) from None
        click.echo(f"exported {n} audit records{f' since {since.isoformat()}' if since else ''} -> {out}")

    @audit.command("count")
    @click.option("--since", type=_Since(), default=None, help="Count records at or after this time.")
    def count(since: datetime | None) -> None:
        """Print the number of audit records (alone, for scripts)."""
        with opened() as store:
            click.echo(str(store.count(since)))

    @click.group("outcomes")
    def outcomes() -> None:
        """Observed outcomes of earlier answers (append-only; for monitoring)."""

    @outcomes.command("import")
    @click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--source", default=None, help="Source for rows without one (e.g. the registry's name).")
    def import_outcomes(path: Path, source: str | None) -> None:
        """Record a registry export (CSV: outcome_id, request_id or patient_id, icans_max_grade and/or
        severe_crs, observed_on, source, corrects). Rows already stored are skipped; a bad row is named
        by its number and field, never its values, and the command exits 2 after the rest is recorded.
        A file without outcome_id gets one derived per row (a digest of the answer or patient, the
        outcome, the day and the source: a re-import stores nothing twice); a file missing a needed
        column is refused whole, one line per column."""
        try:
            created, repeated, failed = import_outcome_rows(opened, path, source)
        except MissingColumns as exc:
            for line in exc.lines:
                click.echo(f"{path.name}: {line}", err=True)
            click.echo(f"{path.name}: nothing recorded", err=True)
            sys.exit(2)
        click.echo(f"{created} outcomes recorded, {repeated} already stored, {len(failed)} refused")
        for line in failed[:50]:
            click.echo(f"  {line}", err=True)
        if failed:
            sys.exit(2)

    return keys, audit, outcomes


def import_outcome_rows(opened: Callable, path: Path, default_source: str | None) -> tuple[int, int, list[str]]:
    """Validate every row, then record the valid ones in batched transactions (record_outcomes)."""
    import pandas as pd
    from pydantic import ValidationError

    from serving.outcomes import OutcomeRecord, record_outcomes
    from serving.routes.outcomes import OutcomeRequest

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = missing_outcome_columns(list(frame.columns), default_source)
    if missing:  # the whole file would fail row by row: one line per missing column instead
        raise MissingColumns(missing)
    created = repeated = 0
    failed: list[tuple[int, str]] = []
    valid: list[tuple[int, OutcomeRecord]] = []
    for number, row in enumerate(frame.to_dict("records"), start=1):
        values: dict[str, Any] = {k: v.strip() for k, v in row.items() if isinstance(v, str) and v.strip() != ""}
        if default_source and "source" not in values:
            values["source"] = default_source
        if "outcome_id" not in frame.columns:
            values["outcome_id"] = derived_outcome_id(values)
        if "icans_max_grade" in values:
            values["icans_max_grade"] = _int_or_text(values["icans_max_grade"])
        if "severe_crs" in values:
            values["severe_crs"] = {"true": True, "1": True, "false": False, "0": False}.get(
                values["severe_crs"].lower(), values["severe_crs"])
        try:
            body = OutcomeRequest(**values)
        except ValidationError as exc:
            failed += [(number, f"row {number}: {'.'.join(map(str, e['loc'])) or 'row'}: {_rule(e)}")
                       for e in exc.errors()]
            continue
        valid.append((number, OutcomeRecord(**body.model_dump(), client_id=f"import:{path.name}")))
    with opened() as store:
        for i, result in record_outcomes(store, [rec for _, rec in valid]):
            number = valid[i][0]
            if isinstance(result, Exception):
                failed.append((number, f"row {number}: {result}"))
                continue
            new = result[1]
            created, repeated = created + new, repeated + (not new)
    return created, repeated, [line for _, line in sorted(failed, key=lambda f: f[0])]


def _rule(error: Any) -> str:
    """A validation error's rule without the submitted value (pydantic's `msg` may quote it)."""
    return str(error["msg"]) if error.get("type") != "value_error" else str(error["msg"]).removeprefix("Value error, ")


class MissingColumns(Exception):
    """An outcomes file that lacks whole columns: refused before any row is read or stored."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def missing_outcome_columns(columns: list[str], default_source: str | None) -> list[str]:
    """One line per column (or pair of alternatives) an outcomes CSV lacks entirely; `outcome_id`
    is never required (derived when absent), `source` not when --source gives it."""
    have = set(columns)
    lines = []
    for needed in (("request_id", "patient_id"), ("icans_max_grade", "severe_crs"), ("observed_on",), ("source",)):
        if have.isdisjoint(needed) and not (needed == ("source",) and default_source):
            what = " or ".join(f"'{c}'" for c in needed)
            extra = " (or pass --source NAME)" if needed == ("source",) else ""
            lines.append(f"missing column {what}: every row needs it{extra}")
    return lines


def derived_outcome_id(values: dict[str, Any]) -> str:
    """An outcome_id for a registry export that has none: a digest of what identifies the report
    (the answer or patient, which outcome, the day, the source), so re-importing the same file
    stores nothing twice and a changed grade for the same report is refused as a conflict."""
    import hashlib

    key = "|".join(
        [values.get("request_id", ""), values.get("patient_id", ""),
         "icans" if "icans_max_grade" in values else "", "crs" if "severe_crs" in values else "",
         values.get("observed_on", ""), values.get("source", "")]
    )
    return "derived-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _int_or_text(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _as_dict(r: KeyRecord) -> dict[str, str | None]:
    return {
        "key_id": r.key_id,
        "client": r.client,
        "scope": r.scope,
        "created_at": _when(r.created_at),
        "revoked_at": _when(r.revoked_at) if r.revoked_at else None,
    }
