"""The service's own store: API keys and the append-only audit trail, behind one SQLAlchemy engine.

SQLite (WAL) next to the service by default, PostgreSQL in production, selected by URL. The schema
is owned by the Alembic environment shipped in serving/migrations and applied by `Store.migrate()`;
no DDL lives in this package. Nothing here touches the database until a method is called.

    core.py         the engine's lifecycle and the migrations (StoreCore)
    engine.py       URL normalisation, SQLite pragmas, PostgreSQL timeouts
    tables.py       the tables queries use, UTCDateTime
    strict_json.py  the JSON text of every JSON column and export
    keys.py         API keys (ApiKeys)
    audit_log.py    the audit trail (AuditLog)
    export.py       the audit trail as CSV or Parquet (AuditExport)
    cds.py          CDS Hooks cards' feedback and the JWT replay cache (CdsRecords)

`Store` is one class made of these mixins, not a set of delegate objects: every caller keeps
calling `store.verify(...)`, `store.append_many(...)`, `store.engine`, and the parts share one
engine, one key cache and one SQLite write lock without passing them around.
"""

from __future__ import annotations

from serving.scopes import SCOPES, Scope
from serving.store.audit_log import AuditLog, AuditRecord, hash_patient_id
from serving.store.cds import CDS_CARD_ENDPOINT, FEEDBACK_OUTCOMES, CdsRecords, FeedbackRecord
from serving.store.core import MIGRATIONS_DIR, SCHEMA_HEAD, StoreCore
from serving.store.engine import normalise_url
from serving.store.export import AuditExport, ExportFormat
from serving.store.keys import CACHE_MISS, TOKEN_PREFIX, ApiKeys, KeyRecord, parse_token
from serving.store.tables import AUDIT_COLUMNS, UTCDateTime, api_keys, as_utc, audit_log, cds_feedback, cds_jti

__all__ = [
    "AUDIT_COLUMNS", "CACHE_MISS", "CDS_CARD_ENDPOINT", "FEEDBACK_OUTCOMES", "MIGRATIONS_DIR", "SCHEMA_HEAD",
    "SCOPES", "TOKEN_PREFIX", "AuditRecord", "ExportFormat", "FeedbackRecord", "KeyRecord", "Scope", "Store",
    "UTCDateTime", "api_keys", "as_utc", "audit_log", "cds_feedback", "cds_jti", "hash_patient_id", "normalise_url", "parse_token",
]


class Store(ApiKeys, AuditLog, AuditExport, CdsRecords, StoreCore):
    """API keys and audit records over one thread-safe engine (the app's key checks call it on the
    event loop only for cache hits; database work runs in the threadpool or the audit writer thread)."""
