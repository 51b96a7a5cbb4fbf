"""Set-based SQL of the five Mavis status tables (domain.md §1.4–1.6), as derived-table declarations.

Every query reads the batch table and sees these bound parameters (never CURRENT_DATE; `today` is
the London date of the run):

    batch_ids       (table)   the patients of one batch (≤ 10,000), a temp table the mechanism fills
    :batch_first, :batch_last  bigint  the batch's lowest and highest id (bound index scans)
    :programme_id   bigint    the programme partition being refreshed
    :today          date      Europe/London date of the run (session rule 5, registration)
    :academic_year  int       Y = academic_year(today): the year the patient-level rows are judged in
                              (and the year of a session without dates)
    :session_ids    bigint[]  NULL, or only these sessions' patient_sessions (session scope)

The SQL is assembled here from constant fragments (no values are ever formatted in). Most CTEs below
are read once by the statement that includes it, so they are not MATERIALIZED: Postgres plans them into
the statement instead of copying their rows first (about 2% of an empty-cache batch's instructions);
the exception is named where it is made.

Rules v2 (statuses-v2.md): a patient is judged in several academic years at once: Y for the
patient-level rows and each Y_s of their patient_sessions for the session rows, so the per-patient facts
are keyed by (patient_id, year).
"""

from __future__ import annotations

from orchestration.clock import academic_year_sql, london_date_sql
from orchestration.patterns.derived_table import BatchFacts, DerivedTable

# The version of the rules below (statuses-v2.md = 2). Change it with the rules: the next tick of the
# refresh-request sensor then queues one full refresh, which records it in `status_rules`.
RULES_VERSION = 2

# app/models/programme.rb: eligible year groups per programme type.
PROGRAMME_YEAR_GROUPS = {"flu": (0, 11), "hpv": (8, 11), "menacwy": (9, 11), "td_ipv": (9, 11)}


def eligible_birth_years(programme_type: str, academic_year: int) -> tuple[int, int]:
    """The `birth_academic_year`s whose year group (academic_year − birth_academic_year − 5) is eligible."""
    lowest, highest = PROGRAMME_YEAR_GROUPS[programme_type]
    return academic_year - 5 - highest, academic_year - 5 - lowest


_YEAR_GROUPS_VALUES = ", ".join(f"('{t}', {lo}, {hi})" for t, (lo, hi) in PROGRAMME_YEAR_GROUPS.items())


def in_batch(column: str) -> str:
    """`column` is one of the batch's ids: a semi-join with the batch's temp table (derived_table.BATCH_TABLE),
    plus the batch's id range, so index scans start and stop at the batch instead of the table's ends."""
    return (f"{column} BETWEEN CAST(:batch_first AS bigint) AND CAST(:batch_last AS bigint) "
            f"AND {column} IN (SELECT id FROM batch_ids)")


PROGRAMME = "CAST(:programme_id AS bigint)"
BIGINT_MAX = "CAST(9223372036854775807 AS bigint)"
SESSIONS = "CAST(:session_ids AS bigint[])"
SESSION_FILTER = f"({SESSIONS} IS NULL OR ps.session_id = ANY({SESSIONS}))"
SESSIONS_WITH_PROGRAMME = f"(SELECT sp.session_id FROM session_programmes AS sp WHERE sp.programme_id = {PROGRAMME})"


# Whole years on `day`, as clock.age_on (a 29 February birthday is reached on 1 March in other years).
def age_sql(dob: str, day: str) -> str:
    return (f"(extract(year FROM {day})::int - extract(year FROM {dob})::int - "
            f"CASE WHEN (extract(month FROM {day}), extract(day FROM {day})) "
            f"< (extract(month FROM {dob}), extract(day FROM {dob})) THEN 1 ELSE 0 END)")


# Given at age 10 or over (Postgres's `date + 10 years` would put a 29 February 10th birthday on 28 February).
_TEN_OR_OVER = (f"coalesce((SELECT {age_sql('pt.date_of_birth', 'r.performed_on')} >= 10 FROM patients AS pt "
                f"WHERE pt.id = r.patient_id), false)")

# The batch's patients eligible for the refreshed programme (by year group in Y).
ELIGIBLE_CTE = f"""
year_groups (type, min_year_group, max_year_group) AS (VALUES {_YEAR_GROUPS_VALUES}),
eligible AS (
    SELECT pt.id AS patient_id, pr.id AS programme_id
    FROM patients AS pt
    CROSS JOIN programmes AS pr
    JOIN year_groups AS yg ON yg.type = pr.type
    WHERE {in_batch('pt.id')} AND pr.id = {PROGRAMME}
      AND CAST(:academic_year AS int) - pt.birth_academic_year - 5 BETWEEN yg.min_year_group AND yg.max_year_group
)"""

# Y_s of a session (v2 §1.4): the academic year of its earliest date; a session without dates is judged
# in Y (decision 1; a session dated across 1 September takes its earliest date's year, decision 7).
def session_year_sql(session_id: str) -> str:
    return (f"coalesce((SELECT {academic_year_sql('min(sd.value)')} FROM session_dates AS sd "
            f"WHERE sd.session_id = {session_id}), CAST(:academic_year AS int))")


# The batch's patient_sessions (in the scope's sessions) with their session's year Y_s and the patient's
# birth year: read once, joined by most of the queries below. (Every session's year is aggregated and
# hash-joined: half the time of a lookup per patient_session.)
BATCH_PATIENT_SESSIONS_SQL = f"""
    SELECT ps.id AS patient_session_id, ps.patient_id, ps.session_id,
           coalesce(sy.year, CAST(:academic_year AS int)) AS session_year, pt.birth_academic_year
    FROM batch_ids AS b
    -- Both joined on the batch's id range as well: merge joins over one index range scan each, where a
    -- lookup of the patient per patient_session cost half of this query.
    JOIN patients AS pt ON pt.id = b.id
    JOIN patient_sessions AS ps ON ps.patient_id = b.id
    LEFT JOIN (SELECT sd.session_id, {academic_year_sql('min(sd.value)')} AS year FROM session_dates AS sd
               GROUP BY sd.session_id) AS sy ON sy.session_id = ps.session_id
    WHERE pt.id BETWEEN CAST(:batch_first AS bigint) AND CAST(:batch_last AS bigint)
      AND ps.patient_id BETWEEN CAST(:batch_first AS bigint) AND CAST(:batch_last AS bigint)
      AND {SESSION_FILTER}"""

# A patient_session's programmes: its session's programmes whose year groups include the patient's year
# group in Y_s (D7; reads the batch fact `batch_patient_sessions`).
PATIENT_SESSION_PROGRAMMES_CTE = f"""
year_groups (type, min_year_group, max_year_group) AS (VALUES {_YEAR_GROUPS_VALUES}),
patient_session_programmes AS (
    SELECT ps.patient_session_id, ps.patient_id, ps.session_id, ps.session_year, sp.programme_id
    FROM batch_patient_sessions AS ps
    JOIN session_programmes AS sp ON sp.session_id = ps.session_id
    JOIN programmes AS pr ON pr.id = sp.programme_id
    JOIN year_groups AS yg ON yg.type = pr.type
    WHERE ps.session_year - ps.birth_academic_year - 5 BETWEEN yg.min_year_group AND yg.max_year_group
)"""

# statuses-v2 §1.4: the academic year each input counts in. cy(c) and ty(t) are the stored year, else the
# year of the London date of submitted_at / created_at; ry(v) is the year of performed_at's London date.
CONSENT_YEAR = f"coalesce(c.academic_year, {academic_year_sql(london_date_sql('c.submitted_at'))})"
TRIAGE_YEAR = f"coalesce(t.academic_year, {academic_year_sql(london_date_sql('t.created_at'))})"
RECORD_YEAR = academic_year_sql(london_date_sql("vr.performed_at"))
# Programmes whose vaccination history alone can ask for triage (D3); the others' records count in R(y).
HISTORY_TRIAGE_TYPES = ("menacwy", "td_ipv")
SEASONAL_TYPES = ("flu",)  # C1: counts only in its own academic year


def sql_list(values) -> str:
    return ", ".join(f"'{v}'" for v in values)


# triage_needed(c) (v2 §1.4, D5): a given consent with a "yes" answer (any case) to a question that
# requires triage; only the JSON value false switches triage off (a missing key or null counts as true).
def triage_needed(consent: str) -> str:
    return f"""({consent}.response = 0 AND EXISTS (
        SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof({consent}.health_answers) = 'array'
                                                THEN {consent}.health_answers ELSE '[]'::jsonb END) AS h
        WHERE lower(h ->> 'response') = 'yes' AND (h -> 'would_require_triage') IS DISTINCT FROM 'false'::jsonb))"""


# The years a batch patient is judged in: Y (academic_year(today)) for the patient-level tables, and each
# Y_s of their patient_sessions (reads the batch fact `batch_patient_sessions`).
PATIENT_YEARS_CTE = f"""
patient_years AS (
    SELECT id AS patient_id, CAST(:academic_year AS int) AS year FROM batch_ids
    UNION ALL
    SELECT DISTINCT ps.patient_id, ps.session_year FROM batch_patient_sessions AS ps
    WHERE ps.session_year <> CAST(:academic_year AS int)
      -- Only the years of sessions with the programme, or holding a session row of it (one that lost it).
      AND (ps.session_id IN {SESSIONS_WITH_PROGRAMME}
           OR EXISTS (SELECT 1 FROM patient_session_session_statuses AS s
                      WHERE s.patient_session_id = ps.patient_session_id AND s.programme_id = {PROGRAMME}))
)"""

# v2 §1.4 latest consents L(y) for every year y at once (step 2a: a consent counts only in cy), their
# aggregates, and the latest triage(y) — for :programme_id.
CONSENT_CTES = f"""
named_consents AS (
    SELECT c.id, c.patient_id, c.response, c.route, c.health_answers, c.submitted_at, c.created_at,
           {CONSENT_YEAR} AS year,
           -- Only self-consents need the patient's name: a lookup for those rows, not a join for all.
           CASE WHEN c.route = 4 THEN (SELECT pt.given_name || ' ' || pt.family_name FROM patients AS pt
                                      WHERE pt.id = c.patient_id)
                ELSE coalesce(pa.full_name, 'Parent or guardian (name unknown)') END AS respondent
    FROM consents AS c
    LEFT JOIN parents AS pa ON pa.id = c.parent_id
    WHERE {in_batch('c.patient_id')} AND c.programme_id = {PROGRAMME}
      AND c.invalidated_at IS NULL AND c.response <> 2
),
latest_consents AS (
    SELECT DISTINCT ON (patient_id, year, respondent) *
    FROM named_consents
    ORDER BY patient_id, year, respondent, submitted_at DESC, created_at DESC, id DESC
),
consent_facts AS (
    SELECT patient_id, year,
           count(*) AS n_latest,
           count(*) FILTER (WHERE route = 4) AS n_self,
           count(*) FILTER (WHERE route <> 4) AS n_parent,
           coalesce(bool_and(response = 0) FILTER (WHERE route = 4), false) AS self_all_given,
           coalesce(bool_and(response = 0) FILTER (WHERE route <> 4), false) AS parent_all_given,
           coalesce(bool_or(response = 0) FILTER (WHERE route = 4), false) AS self_any_given,
           coalesce(bool_or(response = 1) FILTER (WHERE route = 4), false) AS self_any_refused,
           coalesce(bool_or(response = 0) FILTER (WHERE route <> 4), false) AS parent_any_given,
           coalesce(bool_or(response = 1) FILTER (WHERE route <> 4), false) AS parent_any_refused,
           bool_and(response = 1) AS all_refused,
           bool_or(response = 1) AS any_refused,
           bool_or({triage_needed('latest_consents')}) AS any_triage_needed
    FROM latest_consents
    GROUP BY patient_id, year
),
-- Consent rules 2–5 (rule 1, Vaccinated(y) → not_required, is applied in patient_facts).
consent_status AS (
    SELECT patient_id, year, any_refused, any_triage_needed,
           CASE
               WHEN (n_self > 0 AND self_all_given) OR (n_self = 0 AND n_parent > 0 AND parent_all_given) THEN 1
               WHEN n_latest > 0 AND all_refused THEN 2
               WHEN (n_self > 0 AND self_any_given AND self_any_refused)
                 OR (n_self = 0 AND parent_any_given AND parent_any_refused) THEN 3
               ELSE 0
           END AS status
    FROM consent_facts
),
latest_triage AS (
    SELECT DISTINCT ON (t.patient_id, {TRIAGE_YEAR}) t.patient_id, {TRIAGE_YEAR} AS year, t.status,
           t.delay_vaccination_until
    FROM triages AS t
    WHERE {in_batch('t.patient_id')} AND t.programme_id = {PROGRAMME} AND t.invalidated_at IS NULL
    ORDER BY t.patient_id, {TRIAGE_YEAR}, t.created_at DESC, t.id DESC
)"""

KEPT_RECORDS_CTE = f"""
kept_records AS (
    SELECT vr.id, vr.patient_id, vr.session_id, vr.outcome, vr.performed_at, vr.dose_sequence,
           {london_date_sql('vr.performed_at')} AS performed_on, {RECORD_YEAR} AS year
    FROM vaccination_records AS vr
    WHERE {in_batch('vr.patient_id')} AND vr.programme_id = {PROGRAMME}
      AND vr.discarded_at IS NULL
)"""

# Vaccinated(y) over R(y): the kept records of year y (flu) or of years up to y (the others). A record
# completes the course when it is "already had", or given and: at 10 or over (menacwy); at 10 or over as
# a dose 5 or in a session (td_ipv, D4); always (the others). The patient's age is looked up only for
# the programmes that ask for it (a CASE evaluates only the branch it takes).
VACCINATED_CTE = f"""
programme AS (SELECT id, type FROM programmes WHERE id = {PROGRAMME}),
counted_records AS (
    SELECT y.patient_id, y.year, r.outcome,
           CASE
               WHEN r.outcome = 4 THEN true
               WHEN r.outcome <> 0 THEN false
               WHEN p.type = 'menacwy' THEN {_TEN_OR_OVER}
               WHEN p.type = 'td_ipv' THEN CASE WHEN coalesce(r.dose_sequence = 5, false) OR r.session_id IS NOT NULL
                                                THEN {_TEN_OR_OVER} ELSE false END
               ELSE true
           END AS completes
    FROM patient_years AS y
    CROSS JOIN programme AS p
    JOIN kept_records AS r ON r.patient_id = y.patient_id
     AND (r.year = y.year OR (p.type NOT IN ({sql_list(SEASONAL_TYPES)}) AND r.year < y.year))
),
vaccinated AS (
    SELECT patient_id, year, bool_or(outcome = 0) AS any_administered,
           coalesce(bool_or(completes), false) AS vaccinated
    FROM counted_records
    GROUP BY patient_id, year
)"""

# kept_records is MATERIALIZED here: R(y) joins each record to every year judged, and a copy with its year
# computed once costs less than recomputing the year per (record, year) pair (40% of `vaccinated`).
PATIENT_INPUTS_CTES = (f"{PATIENT_YEARS_CTE}, {CONSENT_CTES}, "
                       f"{KEPT_RECORDS_CTE.replace('kept_records AS (', 'kept_records AS MATERIALIZED (', 1)}, "
                       f"{VACCINATED_CTE}")

# Per batch patient and year judged: Vaccinated(y), consent_status(y) (rule 1 first), L(y)'s facts, the
# latest triage(y), and whether the vaccination history asks for triage (D3: menacwy and td_ipv only).
PATIENT_FACTS_CTE = f"""
patient_facts AS (
    SELECT y.patient_id, y.year,
           coalesce(v.vaccinated, false) AS vaccinated,
           CASE WHEN coalesce(v.vaccinated, false) THEN 4 ELSE coalesce(cs.status, 0) END AS consent_status,
           coalesce(cs.any_refused, false) AS any_refused,
           coalesce(cs.any_triage_needed, false) AS any_triage_needed,
           (p.type IN ({sql_list(HISTORY_TRIAGE_TYPES)}) AND coalesce(v.any_administered AND NOT v.vaccinated, false))
               AS history_needs_triage,
           lt.status AS latest_triage,
           lt.delay_vaccination_until
    FROM patient_years AS y
    CROSS JOIN programme AS p
    LEFT JOIN vaccinated AS v ON v.patient_id = y.patient_id AND v.year = y.year
    LEFT JOIN consent_status AS cs ON cs.patient_id = y.patient_id AND cs.year = y.year
    LEFT JOIN latest_triage AS lt ON lt.patient_id = y.patient_id AND lt.year = y.year
)"""

CONSENT_STATUS_EXPR = "f.consent_status"

# D2: a delay_vaccination triage expires ON its delay_vaccination_until date (then: required).
TRIAGE_STATUS_EXPR = """CASE
    WHEN f.vaccinated THEN 0
    WHEN f.latest_triage = 0 THEN 2
    WHEN f.latest_triage = 1 THEN 3
    WHEN f.latest_triage = 3 AND (f.delay_vaccination_until IS NULL
                                  OR f.delay_vaccination_until > CAST(:today AS date)) THEN 4
    WHEN f.latest_triage = 4 THEN 5
    WHEN f.latest_triage IN (2, 3) THEN 1
    WHEN f.consent_status = 1 AND (f.any_triage_needed OR f.history_needs_triage) THEN 1
    ELSE 0
END"""

# Rule 2 reads the LATEST triage (fix of the `.last`-of-newest-first bug at 62b5be2e4), and ANY of L(Y).
VACCINATION_STATUS_EXPR = """CASE
    WHEN f.vaccinated THEN 1
    WHEN f.any_refused OR f.latest_triage = 1 THEN 2
    ELSE 0
END"""

# Session status, per patient_session × programme, judged in Y_s (f is the patient's facts for Y_s).
# Rule 4 and 8 read consent_status(Y_s), so a patient vaccinated by Y_s is neither refused nor conflicting.
SESSION_STATUS_EXPR = """CASE
    WHEN lr.outcome = 0 THEN 1
    WHEN lr.outcome = 4 THEN 2
    WHEN lr.outcome = 3 OR f.latest_triage = 1 THEN 3
    WHEN lr.outcome = 1 OR f.consent_status = 2 THEN 4
    WHEN lr.outcome = 6 OR att.attending = false THEN 5
    WHEN lr.outcome = 2 THEN 6
    WHEN lr.outcome = 5 THEN 7
    WHEN f.consent_status = 3 THEN 8
    ELSE 0
END"""

# Registration, per patient_session. Fix to rule 1: an empty programme list is never `completed`.
REGISTRATION_STATUS_EXPR = """CASE
    WHEN coalesce(d.n_programmes, 0) > 0 AND d.n_recorded = d.n_programmes THEN 3
    WHEN att.attending THEN 1
    WHEN NOT att.attending THEN 2
    ELSE 0
END"""

# Reads the batch fact `batch_patient_sessions`. Only a date of the patient_session's own session
# counts (an attendance on another session's date is bad input, named by the inputs check).
TODAYS_ATTENDANCE_CTE = """
-- The batch's patient_sessions whose session is held today, each with one probe of the attendances'
-- unique (patient_session_id, session_date_id) key (LIMIT 1 keeps it a probe: joined, Postgres hashed
-- every attendance of the day, all patients', in every batch).
todays_attendance AS (
    SELECT ps.patient_session_id, a.attending
    FROM batch_patient_sessions AS ps
    JOIN session_dates AS sd ON sd.session_id = ps.session_id AND sd.value = CAST(:today AS date)
    CROSS JOIN LATERAL (SELECT a.attending FROM session_attendances AS a
                        WHERE a.patient_session_id = ps.patient_session_id AND a.session_date_id = sd.id
                        LIMIT 1) AS a
)"""

# The outcome of each patient's latest kept record per session (needs KEPT_RECORDS_CTE).
LATEST_SESSION_RECORD_CTE = """
latest_session_record AS (
    SELECT DISTINCT ON (r.patient_id, r.session_id) r.patient_id, r.session_id, r.outcome
    FROM kept_records AS r
    WHERE r.session_id IS NOT NULL
    ORDER BY r.patient_id, r.session_id, r.performed_at DESC, r.id DESC
)"""

# Per patient_session of the batch: how many of its programmes it has, and how many have a record there
# (reads the batch fact patient_session_programmes). Only registration reads it, and only for the
# patient_sessions of sessions with the programme (a session without any has no programmes to count).
PROGRAMME_DONE_CTE = f"""
programme_done AS (
    SELECT psp.patient_session_id,
           count(*) AS n_programmes,
           count(r.patient_id) AS n_recorded
    FROM patient_session_programmes AS psp
    LEFT JOIN (
        SELECT DISTINCT vr.patient_id, vr.programme_id, vr.session_id FROM vaccination_records AS vr
        WHERE {in_batch('vr.patient_id')} AND vr.session_id IN {SESSIONS_WITH_PROGRAMME} AND vr.discarded_at IS NULL
    ) AS r ON r.patient_id = psp.patient_id AND r.programme_id = psp.programme_id AND r.session_id = psp.session_id
    WHERE psp.session_id IN {SESSIONS_WITH_PROGRAMME}
    GROUP BY psp.patient_session_id
)"""


# Facts several tables read, materialised once per batch (temp tables of these names), in this order.
BATCH_PATIENT_SESSIONS_FACTS = BatchFacts("batch_patient_sessions", BATCH_PATIENT_SESSIONS_SQL,
                                          ("patient_session_id", "patient_id", "session_id", "session_year"))
ELIGIBLE_FACTS = BatchFacts("eligible", f"WITH {ELIGIBLE_CTE} SELECT patient_id, programme_id FROM eligible",
                            ("patient_id", "programme_id"))
# These read batch facts declared above, so come after them.
PATIENT_FACTS = BatchFacts("patient_facts", f"WITH {PATIENT_INPUTS_CTES}, {PATIENT_FACTS_CTE} SELECT * FROM patient_facts",
                           ("patient_id", "year"))
LATEST_SESSION_RECORD_FACTS = BatchFacts(
    "latest_session_record",
    f"WITH {KEPT_RECORDS_CTE}, {LATEST_SESSION_RECORD_CTE} SELECT * FROM latest_session_record",
    ("patient_id", "session_id"))
TODAYS_ATTENDANCE_FACTS = BatchFacts("todays_attendance", f"WITH {TODAYS_ATTENDANCE_CTE} SELECT * FROM todays_attendance",
                                     ("patient_session_id",))
PATIENT_SESSION_PROGRAMMES_FACTS = BatchFacts(
    "patient_session_programmes", f"WITH {PATIENT_SESSION_PROGRAMMES_CTE} SELECT * FROM patient_session_programmes",
    ("patient_session_id", "programme_id", "patient_id"))
PROGRAMME_DONE_FACTS = BatchFacts("programme_done", f"WITH {PROGRAMME_DONE_CTE} SELECT * FROM programme_done",
                                  ("patient_session_id",))


def _patient_level(name: str, status_expr: str, description: str) -> DerivedTable:
    """Consent, triage and vaccination: one row per patient × programme eligible in Y (§1.6, D6), judged in Y."""
    return DerivedTable(
        name=name,
        key_columns=("patient_id", "programme_id"),
        description=description,
        batch_facts=(BATCH_PATIENT_SESSIONS_FACTS, ELIGIBLE_FACTS, PATIENT_FACTS),
        expected_sql=f"SELECT patient_id, programme_id FROM eligible WHERE programme_id = {PROGRAMME}",
        existing_sql=f"""
            SELECT s.id AS row_id, s.patient_id, s.programme_id, s.status AS cached FROM {name} AS s
            WHERE {in_batch('s.patient_id')} AND s.programme_id = {PROGRAMME}""",
        value_joins="JOIN patient_facts AS f ON f.patient_id = k.patient_id AND f.year = CAST(:academic_year AS int)",
        value_expr=status_expr,
    )


consent_statuses = _patient_level("patient_consent_statuses", CONSENT_STATUS_EXPR, "consent status (rules v2)")
triage_statuses = _patient_level("patient_triage_statuses", TRIAGE_STATUS_EXPR, "triage status (rules v2)")
vaccination_statuses = _patient_level("patient_vaccination_statuses", VACCINATION_STATUS_EXPR,
                                      "vaccination (programme) status (rules v2)")

# One row per programme of each patient_session (§1.6, the July 2025 fix; programmes in Y_s, D7).
session_statuses = DerivedTable(
    name="patient_session_session_statuses",
    key_columns=("patient_session_id", "programme_id"),
    context_columns=("patient_id", "session_id", "session_year"),
    description="session status (rules v2), per patient_session × programme",
    batch_facts=(BATCH_PATIENT_SESSIONS_FACTS, PATIENT_FACTS, LATEST_SESSION_RECORD_FACTS,
                 TODAYS_ATTENDANCE_FACTS, PATIENT_SESSION_PROGRAMMES_FACTS),
    expected_sql=f"""
        SELECT patient_session_id, programme_id, patient_id, session_id, session_year FROM patient_session_programmes
        WHERE programme_id = {PROGRAMME}""",
    existing_sql=f"""
        SELECT s.id AS row_id, s.patient_session_id, s.programme_id, ps.patient_id, ps.session_id, ps.session_year,
               s.status AS cached
        FROM batch_patient_sessions AS ps
        JOIN patient_session_session_statuses AS s ON s.patient_session_id = ps.patient_session_id
        WHERE s.programme_id = {PROGRAMME}""",
    value_joins="""
        JOIN patient_facts AS f ON f.patient_id = k.patient_id AND f.year = k.session_year
        LEFT JOIN latest_session_record AS lr ON lr.patient_id = k.patient_id AND lr.session_id = k.session_id
        LEFT JOIN todays_attendance AS att ON att.patient_session_id = k.patient_session_id""",
    value_expr=SESSION_STATUS_EXPR,
)

# One row per patient_session with at least one programme. A row belongs to the partition of each
# programme its session has (of every programme if it has none); every such partition computes the same
# value (rule 1 looks at ALL the patient_session's programmes).
registration_statuses = DerivedTable(
    name="patient_session_registration_statuses",
    key_columns=("patient_session_id",),
    description="registration status, per patient_session",
    batch_facts=(BATCH_PATIENT_SESSIONS_FACTS, PATIENT_SESSION_PROGRAMMES_FACTS, TODAYS_ATTENDANCE_FACTS,
                 PROGRAMME_DONE_FACTS),
    expected_sql=f"""
        SELECT DISTINCT patient_session_id FROM patient_session_programmes WHERE programme_id = {PROGRAMME}""",
    existing_sql=f"""
        SELECT s.id AS row_id, s.patient_session_id, s.status AS cached
        FROM batch_patient_sessions AS ps
        JOIN patient_session_registration_statuses AS s ON s.patient_session_id = ps.patient_session_id
        -- A session that lost every programme leaves its rows to no partition: every partition
        -- recomputes them (the same value), as every row no longer expected is. (A set of session ids,
        -- not EXISTS … OR EXISTS, which Postgres would test row by row: 10% of a no-change refresh.)
        WHERE ps.session_id IN (
            SELECT sp.session_id FROM session_programmes AS sp WHERE sp.programme_id = {PROGRAMME}
            UNION ALL
            SELECT se.id FROM sessions AS se
            WHERE NOT EXISTS (SELECT 1 FROM session_programmes AS sp WHERE sp.session_id = se.id))""",
    value_joins="""
        LEFT JOIN programme_done AS d ON d.patient_session_id = k.patient_session_id
        LEFT JOIN todays_attendance AS att ON att.patient_session_id = k.patient_session_id""",
    value_expr=REGISTRATION_STATUS_EXPR,
)

STATUS_TABLES = (consent_statuses, triage_statuses, vaccination_statuses, session_statuses, registration_statuses)
STATUS_TABLES_BY_NAME = {t.name: t for t in STATUS_TABLES}
DATE_DEPENDENT_TABLES = ("patient_session_session_statuses", "patient_session_registration_statuses")

# Batch sources: patients of the scope, keyset-paged by id.
ALL_PATIENTS_SQL = """
    SELECT id FROM patients WHERE (CAST(:after AS bigint) IS NULL OR id > CAST(:after AS bigint))
    ORDER BY id LIMIT :limit"""
# The programme's sessions held in another academic year than Y (D7; none in the usual case).
OTHER_YEAR_SESSIONS = (f"(SELECT sp.session_id FROM session_programmes AS sp WHERE sp.programme_id = {PROGRAMME} "
                       f"AND {session_year_sql('sp.session_id')} <> CAST(:academic_year AS int))")
# A programme's full refresh: patients eligible today, plus those holding rows for it (rows no longer
# expected are still recomputed). A registration row always comes with a session row of the
# partition that seeded it, so it is reached through that partition.
PROGRAMME_PATIENTS_SQL = f"""
    -- A union of four keyset-ordered index scans (each the next :limit ids of its kind), rather than
    -- per-patient EXISTS tests that Postgres answers by hashing both status tables on every batch.
    -- The eligible birth years are bound values (see eligible_birth_years), so the planner knows most
    -- patients match and walks the primary key from :after instead of sorting the whole table.
    WITH eligible_ids AS MATERIALIZED (
        SELECT pt.id FROM patients AS pt
        WHERE (CAST(:after AS bigint) IS NULL OR pt.id > CAST(:after AS bigint))
          AND pt.birth_academic_year BETWEEN CAST(:born_from AS int) AND CAST(:born_to AS int)
        ORDER BY pt.id LIMIT :limit
    ),
    -- The batch ends at or before the last of a full page of eligible ids, so the other scans stop
    -- there too: unbounded, they would read every row past :after whenever they find fewer than
    -- :limit ids (an empty cache), once per batch. (With no :limit, as when the scope is counted, no end.)
    page AS (SELECT CASE WHEN count(*) >= :limit THEN max(id) ELSE {BIGINT_MAX} END AS last FROM eligible_ids)
    SELECT id FROM (
        SELECT id FROM eligible_ids
        UNION
        (SELECT s.patient_id FROM patient_consent_statuses AS s
         WHERE (CAST(:after AS bigint) IS NULL OR s.patient_id > CAST(:after AS bigint))
           AND s.patient_id <= (SELECT last FROM page) AND s.programme_id = {PROGRAMME}
         ORDER BY s.patient_id LIMIT :limit)
        UNION
        -- DISTINCT: a patient with several patient_sessions must not use up more than one of the
        -- :limit places, or a patient found only here could fall past the batch's end and be skipped.
        (SELECT DISTINCT ps.patient_id FROM patient_sessions AS ps
         JOIN patient_session_session_statuses AS s ON s.patient_session_id = ps.id
         WHERE (CAST(:after AS bigint) IS NULL OR ps.patient_id > CAST(:after AS bigint))
           AND ps.patient_id <= (SELECT last FROM page) AND s.programme_id = {PROGRAMME}
         ORDER BY ps.patient_id LIMIT :limit)
        UNION
        -- D7: patients of the programme's sessions held in another academic year, whose year group
        -- there may be eligible although it is not in Y (none in the usual case: an empty id set).
        (SELECT DISTINCT ps.patient_id FROM patient_sessions AS ps
         WHERE ps.session_id IN {OTHER_YEAR_SESSIONS}
           AND (CAST(:after AS bigint) IS NULL OR ps.patient_id > CAST(:after AS bigint))
           AND ps.patient_id <= (SELECT last FROM page)
         ORDER BY ps.patient_id LIMIT :limit)
    ) AS candidates
    ORDER BY id LIMIT :limit"""
# About how many patients a programme's full refresh reaches, for sizing its parallel batches: the
# eligible ones and those of its sessions in another year (branches 1 and 4 above). Patients found only
# through rows they hold (after a year-group change or a rollover) are left out: counting them joins
# every patient_session with the session rows (a tenth of a no-change refresh), and leaving them out
# costs at most a less even last round.
PROGRAMME_PATIENTS_ESTIMATE_SQL = f"""
    SELECT count(*) FROM (
        SELECT pt.id FROM patients AS pt
        WHERE pt.birth_academic_year BETWEEN CAST(:born_from AS int) AND CAST(:born_to AS int)
        UNION
        SELECT ps.patient_id FROM patient_sessions AS ps WHERE ps.session_id IN {OTHER_YEAR_SESSIONS}
    ) AS reached"""
SESSION_PATIENTS_SQL = """
    SELECT DISTINCT patient_id AS id FROM patient_sessions
    WHERE session_id = ANY(CAST(:session_ids AS bigint[]))
      AND (CAST(:after AS bigint) IS NULL OR patient_id > CAST(:after AS bigint))
    ORDER BY patient_id LIMIT :limit"""
