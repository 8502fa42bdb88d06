"""The audit trail as a file: CSV or Parquet, streamed in chunks, never overwriting anything."""

from __future__ import annotations

import csv
import os
import secrets
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

from serving.store.strict_json import dumps
from serving.store.tables import AUDIT_COLUMNS

ExportFormat = Literal["csv", "parquet"]


class AuditExport:
    """The Store's export method (a mixin over AuditLog.iter_audit)."""

    iter_audit: Callable[..., Generator[list[dict[str, Any]], None, None]]

    def export(
        self,
        since: datetime | None,
        path: Path,
        fmt: ExportFormat = "csv",
        *,
        chunk_size: int = 5000,
    ) -> int:
        """Write audit rows (time >= since) to a new CSV or Parquet file; returns the row count.

        Streams in chunks; JSON columns are written as JSON text. Refuses to overwrite: the file is
        written under a temporary name and linked into place only if `path` still does not exist,
        so a failed export leaves nothing behind.
        """
        if fmt not in get_args(ExportFormat):
            raise ValueError(f"format must be csv or parquet, not {fmt!r}")
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite it")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"directory {path.parent} does not exist")
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        try:
            with closing(self.iter_audit(since, chunk_size)) as chunks:  # the cursor closes on any error
                n = _write_csv(chunks, tmp) if fmt == "csv" else _write_parquet(chunks, tmp)
            _publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return n


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["inputs"] = dumps(row["inputs"])
    out["top_contributions"] = dumps(row["top_contributions"])
    return out


def _write_csv(chunks: Iterator[list[dict[str, Any]]], path: Path) -> int:
    n = 0
    with path.open("x", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=AUDIT_COLUMNS)
        w.writeheader()
        for chunk in chunks:
            for row in chunk:
                flat = _flat(row)
                flat["time"] = row["time"].isoformat(timespec="microseconds")  # one fixed format
                w.writerow(flat)
            n += len(chunk)
    return n


def _parquet_schema() -> Any:  # a pyarrow.Schema (pyarrow has no types); imported only when Parquet is asked for
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.int64()),
            ("time", pa.timestamp("us", tz="UTC")),
            ("request_id", pa.string()),
            ("client_id", pa.string()),
            ("endpoint", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("patient_hash", pa.string()),
            ("inputs", pa.string()),
            ("risk", pa.float64()),
            ("risk_group", pa.string()),
            ("top_contributions", pa.string()),
            ("latency_ms", pa.float64()),
            ("risk_low", pa.float64()),
            ("risk_high", pa.float64()),
            ("risk_group_change_probability", pa.float64()),
        ]
    )


def _write_parquet(chunks: Iterator[list[dict[str, Any]]], path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema()
    n = 0
    with path.open("xb") as fh, pq.ParquetWriter(fh, schema) as writer:
        for chunk in chunks:
            writer.write_table(pa.Table.from_pylist([_flat(r) for r in chunk], schema=schema))
            n += len(chunk)
    return n


def _publish(tmp: Path, path: Path) -> None:
    """Move a finished file into place without ever replacing an existing one."""
    try:
        os.link(tmp, path)  # atomic, and fails if path exists
    except FileExistsError:
        raise FileExistsError(f"{path} exists; refusing to overwrite it") from None
    except OSError:  # a filesystem without hard links
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite it") from None
        os.replace(tmp, path)
