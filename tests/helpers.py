"""Shared test helpers, in one module: settings for a temporary store, request records, the
service store, readiness polling, the real PostgreSQL, and the helpers several test files use.
Fixtures live in the conftest.py of the tests that use them (tests/ for all, tests/<group>/)."""

from __future__ import annotations

import os
import numpy as np
import pytest
import signal
import subprocess
import time
import uuid
import jwt
import secrets
import sqlalchemy as sa
from pathlib import Path
from collections.abc import Sequence, Iterator
from fastapi.testclient import TestClient
from core.contract import FEATURES_BY_NAME
from datetime import UTC, datetime, timedelta
from typing import Any
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from serving.fhir import codes as C
from serving.fhir.mapping import map_prefetch
from contextlib import contextmanager
from serving.store import AuditRecord, Store


PG_HOST = os.environ.get("ICANS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("ICANS_TEST_PG_PORT", "5432"))


def pg_connect(dbname: str = "postgres"):
    """(autocommit connection, user): as postgres, else as root. Fails (or skips, if allowed) if unreachable."""
    import psycopg

    errors = []
    for user in ("postgres", "root"):
        try:
            conn = psycopg.connect(
                host=PG_HOST, port=PG_PORT, dbname=dbname, user=user, autocommit=True, connect_timeout=5
            )
            return conn, user
        except psycopg.OperationalError as exc:
            errors.append(f"{user}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
    if os.environ.get("ICANS_SKIP_POSTGRES") == "1":
        pytest.skip("PostgreSQL unreachable and ICANS_SKIP_POSTGRES=1")
    pytest.fail(
        f"PostgreSQL unreachable at {PG_HOST}:{PG_PORT} ({'; '.join(errors)}); "
        "start it, or set ICANS_SKIP_POSTGRES=1 to skip the tests that need it"
    )


def run_group(argv: Sequence[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """subprocess.run with capture and text; on timeout the child's whole process group is killed."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"{argv[:3]} did not finish within {timeout:.0f} s (its process group was killed)"
                             f"\n{(out or '')[-3000:]}\n{(err or '')[-3000:]}") from None
    finally:
        if proc.poll() is None:
            kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group started by `proc` (it is its own session leader)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def make_settings(root: Path, **overrides):
    from core.settings import Settings

    values = dict(
        # tests of the gate set allow_ungated=False; the rest need a served model from small, quick searches
        allow_ungated=True,
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=(root / "mlartifacts").as_uri(),
        data_dir=root / "data",
        n_iter=2,
        # the tree families only: the tests' trainings serve a tree model, so the tree serving path (leaf
        # tables, the lazily loaded booster, the compiled bootstrap kernels) stays covered by every service
        # test; the served logistic model has its own (tests/model/test_linear.py)
        families=["xgboost", "hist_gradient_boosting"],
        cv_folds=3,
        default_cohort_size=1500,
        seed=7,
        model_load_backoff_s=0.05,
        model_load_retries=1,
        store_url=f"sqlite:///{root / 'service.db'}",
        audit_hmac_key="test-audit-hmac-key-0123456789",
        key_cache_ttl_s=0.0,
        auth="on",
        validation="split",  # the split design's tests; the repeated-CV design has its own (tests/model)
        cv_repeats=2,
        resample_n_iter=2,
    )
    values.update(overrides)
    return Settings(**values)


def random_records(n: int, seed: int = 0, missing_rate: float = 0.3) -> list[dict]:
    """Valid requests drawn across the whole hard range of the contract (not the cohort)."""
    from core.contract import FEATURES

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rec: dict = {}
        for f in FEATURES:
            if not f.required and rng.random() < missing_rate:
                rec[f.name] = None
            elif f.kind == "float":
                lo = f.min + (1e-6 if f.min_exclusive else 0)
                # log-uniform over wide ranges so that typical values are well covered too
                if f.max / max(lo, 1e-3) > 100:
                    rec[f.name] = float(np.exp(rng.uniform(np.log(max(lo, 1e-3)), np.log(f.max))))
                else:
                    rec[f.name] = float(rng.uniform(lo, f.max))
            elif f.kind == "bool":
                rec[f.name] = bool(rng.random() < 0.5)
            else:
                rec[f.name] = str(rng.choice(f.categories))
        out.append(rec)
    return out


def edge_records() -> list[dict]:
    """Every float at its lower and at its upper hard bound, optionals present and absent."""
    from core.contract import FEATURES, example_request

    out = []
    for at in ("min", "max"):
        for with_optional in (True, False):
            rec = dict(example_request())
            for f in FEATURES:
                if f.kind == "float":
                    v = f.min if at == "min" else f.max
                    if at == "min" and f.min_exclusive:
                        v = 1e-9
                    rec[f.name] = float(v) if (f.required or with_optional) else None
            out.append(rec)
    return out


def open_store(settings):
    from serving.store import Store

    store = Store(settings.store_url, settings.audit_hmac_key.get_secret_value().encode(), key_cache_ttl_s=0)
    store.migrate()
    return store


def wait_ready(client, timeout: float = 60.0):
    """Poll GET /readyz of a TestClient until it answers 200; returns that response."""
    import time

    deadline = time.time() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or time.time() > deadline:
            return response
        time.sleep(0.05)


def _wait_ready(client: TestClient, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"not ready: {r.json()}")


SERVICE_URL = "https://cds.test"


ISS = "https://ehr.test/"


ISS_EC = "https://ehr-ec.test/"


SERVICE = "/cds-services/icans-risk"


def _wire(app, settings) -> None:
    """Include the CDS Hooks router unless serving/app.py already does."""
    from serving.routes import cds_hooks

    if not any(getattr(r, "path", None) == "/cds-services" for r in app.router.routes):
        app.include_router(cds_hooks.build_router(settings))


def _ready(c: TestClient) -> None:
    deadline = time.time() + 60
    while c.get("/readyz").status_code != 200:
        assert time.time() < deadline, c.get("/readyz").json()
        time.sleep(0.05)


def make_token(keys, path: str, *, iss: str = ISS, key=None, alg: str = "RS384", aud: Any = None,
               exp_in: float = 120, iat_ago: float = 0, jti: str | None = None, drop: str | None = None) -> str:
    now = int(time.time())
    claims = {"iss": iss, "aud": aud or SERVICE_URL + path, "exp": now + int(exp_in), "iat": now - int(iat_ago),
              "jti": jti or str(uuid.uuid4()), "tenant": "hospital-1"}
    if drop:
        claims.pop(drop)
    signer = key if key is not None else (keys["ec"] if alg.startswith("ES") else keys["rsa"])
    return jwt.encode(claims, signer, algorithm=alg, headers={"kid": "ec-1" if alg.startswith("ES") else "rsa-1", "typ": "JWT"})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hook_body(chart: Chart, **extra: Any) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": chart.pid},
        "prefetch": chart.prefetch(),
        **extra,
    }


def call(c: TestClient, keys, chart: Chart, **extra: Any):
    return c.post(SERVICE, json=hook_body(chart, **extra), headers=bearer(make_token(keys, SERVICE)))


def now_chart(pid: str = "pat-001", **kw: Any) -> Chart:
    return Chart(pid, now=datetime.now(UTC), **kw)


def audit_row(trained, request_id: str) -> dict[str, Any]:
    store = open_store(trained[0])
    rows = [r for chunk in store.iter_audit() for r in chunk if r["request_id"] == request_id]
    assert len(rows) == 1, rows
    return rows[0]


NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


UNITS = {  # contract feature -> (value, UCUM) of the default chart, in contract units
    "marrow_blasts_pct": (12.0, "%"),
    "ldh_u_l": (240.0, "U/L"),
    "crp_mg_l": (8.0, "mg/L"),
    "platelets_10e9_l": (85.0, "10*9/L"),
    "creatinine_mg_dl": (0.7, "mg/dL"),
    "ferritin_ng_ml": (650.0, "ng/mL"),
    "il6_pg_ml": (6.0, "pg/mL"),
}


# What the default chart must map to (born 1992-03-01, female, anchor = lymphodepletion start).
EXPECTED = {
    "sex": "female",
    "prior_neuro_comorbidity": False,
    "cns_involvement": False,
    "prior_allo_hct": True,
    "marrow_blasts_pct": 12.0,
    "ldh_u_l": 240.0,
    "product": "tisagenlecleucel",
    "costimulatory_domain": "4-1BB",
    "target_antigen": "CD19",
    "car_t_dose_10e6_per_kg": 1.5,
    "lymphodepletion": "flu_cy",
    "crp_mg_l": 8.0,
    "platelets_10e9_l": 85.0,
    "creatinine_mg_dl": 0.7,
    "ferritin_ng_ml": 650.0,
    "il6_pg_ml": 6.0,
    "ifng_pg_ml": None,
    "il15_pg_ml": None,
}


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _concept(system: str, code: str, display: str | None, text: str | None) -> dict[str, Any]:
    """A CodeableConcept with one coding (display and text only when given)."""
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    concept: dict[str, Any] = {"coding": [coding]}
    if text:
        concept["text"] = text
    return concept


class Chart:
    """A synthetic patient's FHIR record, built from fhir.resources R4B models.

    Default: a 34-year-old woman with a prior allogeneic HCT, tisagenlecleucel 1.5 x 10^6/kg
    ordered yesterday, fludarabine + cyclophosphamide from 2 days ago (the anchor), baseline labs
    3 days ago in contract units (ferritin and IL-6 present; IFN-gamma and IL-15 absent).
    """

    def __init__(self, pid: str = "pat-001", *, now: datetime = NOW, complete: bool = True) -> None:
        self.pid, self.now = pid, now
        self.patient = Patient(id=pid, gender="female", birthDate="1992-03-01")
        self.observations: list[Observation] = []
        self.conditions: list[Condition] = []
        self.procedures: list[Procedure] = []
        self.requests: list[MedicationRequest] = []
        self.medications: list[Medication] = []
        self.omit: set[str] = set()  # prefetch keys the client does not send
        self._n = 0
        if complete:
            for feature, (value, unit) in UNITS.items():
                self.lab(feature, value, unit)
            self.procedure(C.SNOMED, "234336002", "Hemopoietic stem cell transplant", days_ago=400)
            self.car_t("Kymriah (tisagenlecleucel)", 1.5)
            self.lymphodepletion()

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n}"

    def ago(self, days: float) -> str:
        return _iso(self.now - timedelta(days=days))

    def lab(
        self,
        feature: str,
        value: float,
        unit: str,
        *,
        days_ago: float = 3,
        status: str = "final",
        code: tuple[str, str] | None = None,
        ucum: bool = True,
    ) -> Observation:
        system, code_ = code or C.lab_codes(feature)[0]
        q: dict[str, Any] = {"value": value, "unit": unit}
        if ucum:
            q.update(system=C.UCUM, code=unit)
        obs = Observation(
            id=self._id("obs"),
            status=status,
            category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            code={"coding": [{"system": system, "code": code_}], "text": FEATURES_BY_NAME[feature].description if feature in FEATURES_BY_NAME else feature},
            subject={"reference": f"Patient/{self.pid}"},
            effectiveDateTime=self.ago(days_ago),
            valueQuantity=q,
        )
        obs._feature = feature  # type: ignore[attr-defined]  # which prefetch key it belongs to
        self.observations.append(obs)
        return obs

    def weight(self, kg: float, days_ago: float = 3) -> Observation:
        obs = Observation(
            id=self._id("wt"),
            status="final",
            code={"coding": [{"system": C.LOINC, "code": "29463-7", "display": "Body weight"}]},
            subject={"reference": f"Patient/{self.pid}"},
            effectiveDateTime=self.ago(days_ago),
            valueQuantity={"value": kg, "unit": "kg", "system": C.UCUM, "code": "kg"},
        )
        obs._feature = "body-weight"  # type: ignore[attr-defined]
        self.observations.append(obs)
        return obs

    def condition(
        self,
        system: str,
        code: str,
        display: str | None = None,
        *,
        text: str | None = None,
        days_ago: float = 200,
        verification: str = "confirmed",
        clinical: str = "active",
    ) -> Condition:
        concept = _concept(system, code, display, text)
        c = Condition(
            id=self._id("cond"),
            clinicalStatus={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]},
            verificationStatus={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]},
            code=concept,
            subject={"reference": f"Patient/{self.pid}"},
            onsetDateTime=self.ago(days_ago),
        )
        self.conditions.append(c)
        return c

    def procedure(self, system: str, code: str, display: str | None = None, *, text: str | None = None,
                  days_ago: float = 400, status: str = "completed") -> Procedure:
        concept = _concept(system, code, display, text)
        p = Procedure(id=self._id("proc"), status=status, code=concept, subject={"reference": f"Patient/{self.pid}"},
                      performedDateTime=self.ago(days_ago))
        self.procedures.append(p)
        return p

    def car_t(self, name: str, dose: float | None, unit: str = "10*6/kg", *, days_ago: float = 1,
              via_medication: bool = False, status: str = "active") -> MedicationRequest:
        kwargs: dict[str, Any] = {}
        if via_medication:
            med = Medication(id=self._id("med"), code={"text": name})
            self.medications.append(med)
            kwargs["medicationReference"] = {"reference": f"Medication/{med.id}"}
        else:
            kwargs["medicationCodeableConcept"] = {"text": name}
        if dose is not None:
            kwargs["dosageInstruction"] = [
                {"doseAndRate": [{"doseQuantity": {"value": dose, "unit": unit, "system": C.UCUM, "code": unit}}]}
            ]
        mr = MedicationRequest(id=self._id("mr"), status=status, intent="order", subject={"reference": f"Patient/{self.pid}"},
                               authoredOn=self.ago(days_ago), **kwargs)
        self.requests.append(mr)
        return mr

    def lymphodepletion(self, agents: tuple[str, ...] = ("fludarabine", "cyclophosphamide"), days_ago: float = 2) -> None:
        rx = {"fludarabine": "24698", "cyclophosphamide": "3002", "bendamustine": "134547"}
        for agent in agents:
            self.requests.append(
                MedicationRequest(
                    id=self._id("ld"),
                    status="active",
                    intent="order",
                    subject={"reference": f"Patient/{self.pid}"},
                    authoredOn=self.ago(days_ago),
                    medicationCodeableConcept={"coding": [{"system": C.RXNORM, "code": rx[agent], "display": agent}]},
                )
            )

    @staticmethod
    def _bundle(resources: list[Any]) -> dict[str, Any] | None:
        if not resources:
            return None  # CDS Hooks: a prefetch key without data is null
        return Bundle(type="searchset", entry=[{"resource": r} for r in resources]).model_dump(mode="json")

    def prefetch(self) -> dict[str, Any]:
        out: dict[str, Any] = {"patient": self.patient.model_dump(mode="json")}
        for feature, key in C.LAB_KEYS.items():
            out[key] = self._bundle([o for o in self.observations if getattr(o, "_feature", None) == feature])
        out["body-weight"] = self._bundle([o for o in self.observations if getattr(o, "_feature", None) == "body-weight"])
        out["conditions"] = self._bundle(self.conditions)
        out["procedures"] = self._bundle(self.procedures)
        out["medications"] = self._bundle(self.requests + self.medications)
        return {k: v for k, v in out.items() if k not in self.omit}


def mapped(chart: Chart, **kwargs: Any):
    return map_prefetch(chart.pid, chart.prefetch(), now=chart.now, **kwargs)


KEY = b"test-hmac-key-0123456789abcdef"


PATIENT = "pseudonym-PT-000042-zq"


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new database icans_test_<random>, dropped afterwards (even with connections left open)."""
    admin, user = _pg_connect()
    name = f"icans_test_{secrets.token_hex(6)}"
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def record(i: int = 0, *, patient_id: str | None = PATIENT, **overrides) -> AuditRecord:
    values = dict(
        request_id=f"req-{i:05d}",
        client_id="ehr-ward-3",
        endpoint="/v1/risk",
        model_name="icans-risk-severe_icans",
        model_version="7",
        inputs={"age": 40.0 + i % 30, "crp": 12.5, "cns_involvement": False, "product": "tisagenlecleucel"},
        risk=0.125 + (i % 7) / 100,
        risk_group="intermediate",
        top_contributions=[{"feature": "crp", "log_odds": 0.31}, {"feature": "age", "log_odds": -0.12}],
        latency_ms=3.25,
        patient_id=patient_id,
    )
    values.update(overrides)
    return AuditRecord(**values)


def dump_database(store: Store) -> str:
    """Every value of every table as text (and, for SQLite, the raw bytes of the files too)."""
    parts = []
    with store.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                parts.append(repr(tuple(row)))
    if store.backend == "sqlite":
        db = Path(store.url.database)
        for f in db.parent.glob(db.name + "*"):
            parts.append(f.read_bytes().decode("latin-1"))
    return "\n".join(parts)


# the names some moved helpers knew these by
_pg_connect = pg_connect
