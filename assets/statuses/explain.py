"""`pso explain PATIENT_ID PROGRAMME_TYPE`: one patient's statuses for one programme (cached and
recomputed through the refresh's SQL) and the inputs that decided them."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from assets.statuses import sql as q
from assets.statuses.refresh import base_params, programme_ids_by_type
from orchestration.patterns import derived_table as dt


Y = "CAST(:academic_year AS int)"
CONSENTS = "consents (the academic year each counts in; L(Y) keeps the latest of each respondent)"
TRIAGES = "triages (the academic year each counts in)"
RECORDS = "vaccination records (the academic year each was given in)"
YEARS = "per academic year judged (Y for the patient-level rows, Y_s for session rows)"
PATIENT_SESSIONS = "patient sessions (Y_s = the academic year of the session's earliest date)"

# The inputs that decide a patient's statuses for one programme (ids, codes, dates only), each record
# with the year it counts in and, when it does not count in Y, why. The years and the rules are the
# refresh's own SQL fragments (assets/statuses/sql.py).
EXPLAIN_INPUTS = {
    CONSENTS: f"""
        WITH named AS (
            SELECT c.id, c.parent_id, c.response, c.route, c.submitted_at, c.created_at, c.invalidated_at,
                   c.academic_year AS stored_year, {q.CONSENT_YEAR} AS year, {q.triage_needed('c')} AS triage_needed,
                   CASE WHEN c.route = 4 THEN 'self' ELSE coalesce(pa.full_name, 'Parent or guardian (name unknown)')
                   END AS respondent
            FROM consents AS c LEFT JOIN parents AS pa ON pa.id = c.parent_id
            WHERE {q.in_batch('c.patient_id')} AND c.programme_id = {q.PROGRAMME}
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY year, respondent, (invalidated_at IS NULL AND response <> 2)
                                         ORDER BY submitted_at DESC, created_at DESC, id DESC) AS rank
            FROM named
        )
        -- Respondents are numbered, not named (their names are personal data).
        SELECT id AS consent_id, dense_rank() OVER (ORDER BY respondent) AS respondent, parent_id, response, route,
               submitted_at, created_at, stored_year, year AS counts_in_year, triage_needed,
               CASE WHEN invalidated_at IS NOT NULL THEN 'does not count: invalidated'
                    WHEN response = 2 THEN 'does not count: response not_provided'
                    WHEN year <> {Y} THEN 'does not count in ' || {Y} || ': consent for another academic year'
                    WHEN rank > 1 THEN 'does not count: a later answer of the same respondent replaces it'
                    ELSE 'counts: in L(' || {Y} || ')' END AS why
        FROM ranked ORDER BY submitted_at, id""",
    TRIAGES: f"""
        WITH t AS (
            SELECT t.id, t.status, t.created_at, t.invalidated_at, t.delay_vaccination_until,
                   t.academic_year AS stored_year, {q.TRIAGE_YEAR} AS year
            FROM triages AS t WHERE {q.in_batch('t.patient_id')} AND t.programme_id = {q.PROGRAMME}
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY year, invalidated_at IS NULL
                                         ORDER BY created_at DESC, id DESC) AS rank FROM t
        )
        SELECT id AS triage_id, status, created_at, stored_year, year AS counts_in_year, delay_vaccination_until,
               CASE WHEN invalidated_at IS NOT NULL THEN 'does not count: invalidated'
                    WHEN year <> {Y} THEN 'does not count in ' || {Y} || ': triage of another academic year'
                    WHEN rank > 1 THEN 'does not count: a later triage of the year replaces it'
                    WHEN status = 3 AND delay_vaccination_until <= CAST(:today AS date)
                        THEN 'counts: latest triage(' || {Y} || '); the delay expired on ' || delay_vaccination_until
                    ELSE 'counts: latest triage(' || {Y} || ')' END AS why
        FROM ranked ORDER BY created_at, id""",
    RECORDS: f"""
        WITH programme AS (SELECT type FROM programmes WHERE id = {q.PROGRAMME})
        SELECT vr.id AS record_id, vr.session_id, vr.outcome, vr.performed_at, vr.dose_sequence,
               {q.RECORD_YEAR} AS year,
               {q.age_sql('pt.date_of_birth', q.london_date_sql('vr.performed_at'))} AS age_when_given,
               CASE WHEN vr.discarded_at IS NOT NULL THEN 'does not count: discarded'
                    WHEN p.type IN ({q.sql_list(q.SEASONAL_TYPES)}) AND {q.RECORD_YEAR} < {Y}
                        THEN 'does not count in ' || {Y} || ': ' || p.type || ' from a past academic year'
                    WHEN {q.RECORD_YEAR} > {Y} THEN 'does not count in ' || {Y} || ': given in a later academic year'
                    ELSE 'counts: in R(' || {Y} || ')' END AS why
        FROM vaccination_records AS vr JOIN patients AS pt ON pt.id = vr.patient_id CROSS JOIN programme AS p
        WHERE {q.in_batch('vr.patient_id')} AND vr.programme_id = {q.PROGRAMME}
        ORDER BY vr.performed_at, vr.id""",
    # Y and every Y_s the rules judged this patient in.
    YEARS: f"""
        WITH {q.PATIENT_INPUTS_CTES}, {q.PATIENT_FACTS_CTE}
        SELECT year, year = {Y} AS is_y, vaccinated, consent_status, any_refused, any_triage_needed,
               history_needs_triage, latest_triage, delay_vaccination_until
        FROM patient_facts ORDER BY year""",
    PATIENT_SESSIONS: f"""
        WITH {q.PATIENT_SESSION_PROGRAMMES_CTE}
        SELECT ps.patient_session_id, ps.session_id, ps.session_year,
               ps.session_year - ps.birth_academic_year - 5 AS year_group_in_session_year,
               EXISTS (SELECT 1 FROM session_programmes sp WHERE sp.session_id = ps.session_id
                       AND sp.programme_id = {q.PROGRAMME}) AS session_has_programme,
               EXISTS (SELECT 1 FROM patient_session_programmes psp WHERE psp.patient_session_id = ps.patient_session_id
                       AND psp.programme_id = {q.PROGRAMME}) AS programme_of_the_patient_session
        FROM batch_patient_sessions AS ps ORDER BY ps.patient_session_id""",
    "today's attendance": f"""
        SELECT a.patient_session_id, sd.value AS session_date, a.attending
        FROM session_attendances AS a
        JOIN patient_sessions AS ps ON ps.id = a.patient_session_id
        JOIN session_dates AS sd ON sd.id = a.session_date_id AND sd.session_id = ps.session_id
                                AND sd.value = CAST(:today AS date)
        WHERE {q.in_batch('ps.patient_id')} ORDER BY a.patient_session_id""",
}


def explain_statuses(conn: sa.Connection, patient_id: int, programme_type: str, today: date) -> dict[str, Any]:
    """For one patient and programme: every status (cached and recomputed through the refresh's SQL), the
    academic year judged, and the inputs that decided it (why each record counts or not)."""
    ids = programme_ids_by_type(conn)
    if programme_type not in ids:
        raise ValueError(f"unknown programme {programme_type!r}; known: {sorted(ids)}")
    if conn.execute(sa.text("SELECT id FROM patients WHERE id = :id"), {"id": patient_id}).first() is None:
        raise ValueError(f"no patient with id {patient_id}")
    params = base_params(ids[programme_type], today)
    statuses = dt.explain(conn, q.STATUS_TABLES, patient_id, params)
    with dt.read_transaction(conn):
        batch = {**params, **dt.fill_batch_ids(conn, [patient_id])}
        dt.prepare_batch(conn, [q.BATCH_PATIENT_SESSIONS_FACTS], batch)
        inputs = {label: [dict(r) for r in conn.execute(sa.text(sql), batch).mappings().all()]
                  for label, sql in EXPLAIN_INPUTS.items()}
    return {"patient_id": patient_id, "programme": programme_type, "today": today.isoformat(),
            "academic_year": params["academic_year"], "statuses": statuses, "inputs": inputs}


STATUS_NAMES = {
    "patient_consent_statuses": {0: "no_response", 1: "given", 2: "refused", 3: "conflicts", 4: "not_required"},
    "patient_triage_statuses": {0: "not_required", 1: "required", 2: "safe_to_vaccinate", 3: "do_not_vaccinate",
                                4: "delay_vaccination", 5: "invite_to_clinic"},
    "patient_vaccination_statuses": {0: "none_yet", 1: "vaccinated", 2: "could_not_vaccinate"},
    "patient_session_session_statuses": {0: "none_yet", 1: "vaccinated", 2: "already_had", 3: "had_contraindications",
                                         4: "refused", 5: "absent_from_session", 6: "unwell", 7: "absent_from_school",
                                         8: "conflicting_consent"},
    "patient_session_registration_statuses": {0: "unknown", 1: "attending", 2: "not_attending", 3: "completed"},
}


def format_explanation(explanation: dict[str, Any]) -> str:
    lines = [f"patient {explanation['patient_id']} · programme {explanation['programme']} · "
             f"today {explanation['today']} (Europe/London) · academic year judged {explanation['academic_year']} "
             "(patient-level rows; session rows: their session's year)", ""]
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


