"""`pso explain PATIENT_ID PROGRAMME_TYPE`: one patient's statuses for one programme (cached and
recomputed through the refresh's SQL) and the inputs that decided them."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from assets.statuses import sql as q
from assets.statuses.refresh import base_params, programme_ids_by_type
from orchestration.patterns import derived_table as dt


def explain_statuses(conn: sa.Connection, patient_id: int, programme_type: str, today: date) -> dict[str, Any]:
    """For one patient and programme: every status (cached and recomputed) and the inputs that decided it."""
    ids = programme_ids_by_type(conn)
    if programme_type not in ids:
        raise ValueError(f"unknown programme {programme_type!r}; known: {sorted(ids)}")
    if conn.execute(sa.text("SELECT id FROM patients WHERE id = :id"), {"id": patient_id}).first() is None:
        raise ValueError(f"no patient with id {patient_id}")
    params = base_params(ids[programme_type], today)
    statuses = dt.explain(conn, q.STATUS_TABLES, patient_id, params)
    with dt.read_transaction(conn):
        batch = {**params, **dt.fill_batch_ids(conn, [patient_id])}
        inputs = {label: [dict(r) for r in conn.execute(sa.text(sql), batch).mappings().all()]
                  for label, sql in q.EXPLAIN_INPUTS.items()}
    return {"patient_id": patient_id, "programme": programme_type, "today": today.isoformat(),
            "statuses": statuses, "inputs": inputs}


STATUS_NAMES = {
    "patient_consent_statuses": {0: "no_response", 1: "given", 2: "refused", 3: "conflicts"},
    "patient_triage_statuses": {0: "not_required", 1: "required", 2: "safe_to_vaccinate", 3: "do_not_vaccinate",
                                4: "delay_vaccination"},
    "patient_vaccination_statuses": {0: "none_yet", 1: "vaccinated", 2: "could_not_vaccinate"},
    "patient_session_session_statuses": {0: "none_yet", 1: "vaccinated", 2: "already_had", 3: "had_contraindications",
                                         4: "refused", 5: "absent_from_session", 6: "unwell", 7: "absent_from_school"},
    "patient_session_registration_statuses": {0: "unknown", 1: "attending", 2: "not_attending", 3: "completed"},
}


def format_explanation(explanation: dict[str, Any]) -> str:
    lines = [f"patient {explanation['patient_id']} · programme {explanation['programme']} · "
             f"today {explanation['today']} (Europe/London)", ""]
    for table, rows in explanation["statuses"].items():
        names = STATUS_NAMES[table]
        if not rows:
            lines.append(f"{table}: no row (readers show code 0)")
        for row in rows:
            keys = ", ".join(f"{k}={row[k]}" for k in row if k not in ("cached", "computed"))
            flag = "" if row["cached"] == row["computed"] else "   ← STALE: a refresh will change it"
            lines.append(f"{table} [{keys}]: {names.get(row['cached'], row['cached'])} "
                         f"(recomputed: {names.get(row['computed'], row['computed'])}){flag}")
    lines.append("")
    for label, rows in explanation["inputs"].items():
        lines.append(f"{label}:")
        if not rows:
            lines.append("  (none)")
        for row in rows:
            lines.append("  " + ", ".join(f"{k}={_show(v)}" for k, v in row.items()))
    return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


