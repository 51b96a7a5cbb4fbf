"""Multiplex results backfill (domain.md §5): both passes, reruns, order independence, the check, Dagster runs."""

import random
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, materialize

from assets import results as results_family
from assets.results import backfill_results, find_missing_results
from orchestration.schema import COVID19_DISEASE_ID, FLU_A_DISEASE_ID
from orchestration.synthetic import SynthContext, libpq_url

UTC = timezone.utc
EVERYTHING = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))
MARCH = (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))
APRIL = (datetime(2024, 4, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC))

RESULT_ROW = ("SELECT test_event_id, test_order_id, disease_id, result, test_result, is_deleted, "
              "created_at, created_by, updated_at, updated_by FROM result")


def _id(name: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, name)


def _at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2024, month, day, hour, tzinfo=UTC)


USER = _id("user")
ORDER_COLS = "internal_id, created_at, created_by, updated_at, updated_by, result"
EVENT_COLS = ("internal_id, created_at, created_by, updated_at, updated_by, test_order_id, result, correction_status, "
              "prior_corrected_test_event_id")


def _order(conn, name, created, result, updated=None):
    conn.execute(sa.text(f"INSERT INTO test_order ({ORDER_COLS}) VALUES (:id, :c, :u, :up, :u, :r)"),
                 {"id": _id(name), "c": created, "u": USER, "up": updated or created, "r": result})


def _event(conn, name, order, created, result, status="ORIGINAL", prior=None, current=True):
    conn.execute(sa.text(f"INSERT INTO test_event ({EVENT_COLS}) VALUES (:id, :c, :u, :c, :u, :o, :r, :s, :p)"),
                 {"id": _id(name), "c": created, "u": USER, "o": _id(order), "r": result, "s": status,
                  "p": _id(prior) if prior else None})
    if current:
        conn.execute(sa.text("UPDATE test_order SET test_event_id = :e WHERE internal_id = :o"),
                     {"e": _id(name), "o": _id(order)})


def _existing_result(conn, event, order, disease, result, created):
    conn.execute(sa.text(
        "INSERT INTO result (created_at, updated_at, test_event_id, test_order_id, disease_id, result, test_result) "
        "VALUES (:c, :c, :e, :o, :d, :snomed, :r)"),
        {"c": created, "e": _id(event) if event else None, "o": _id(order), "d": disease, "r": result,
         "snomed": {"POSITIVE": "260373001", "NEGATIVE": "260415000"}[result]})


@pytest.fixture
def rule_cases(engine):
    """One order per rule; times in March 2024 unless a correction lands in April."""
    with engine.begin() as conn:
        _order(conn, "pending-with-result", _at(3, 2), "POSITIVE")
        _order(conn, "pending-no-result", _at(3, 3), None)
        _order(conn, "submitted", _at(3, 4), "NEGATIVE", updated=_at(3, 4, 13))
        _event(conn, "submitted-e1", "submitted", _at(3, 4, 13), "NEGATIVE")
        # Corrected twice, the last correction in April: the chain ORIGINAL → CORRECTED → CORRECTED.
        _order(conn, "corrected", _at(3, 5), "UNDETERMINED", updated=_at(4, 2))
        _event(conn, "corrected-e1", "corrected", _at(3, 5, 13), "POSITIVE", current=False)
        _event(conn, "corrected-e2", "corrected", _at(3, 20), "NEGATIVE", "CORRECTED", "corrected-e1", current=False)
        _event(conn, "corrected-e3", "corrected", _at(4, 2), "UNDETERMINED", "CORRECTED", "corrected-e2")
        _order(conn, "removed", _at(3, 6), "POSITIVE", updated=_at(3, 9))
        _event(conn, "removed-e1", "removed", _at(3, 6, 13), "POSITIVE", current=False)
        _event(conn, "removed-e2", "removed", _at(3, 9), "POSITIVE", "REMOVED", "removed-e1")
        _order(conn, "no-result", _at(3, 7), None)
        _event(conn, "no-result-e1", "no-result", _at(3, 7, 13), None)
        # Backfilled earlier by hand: keeps its row, gets no second one.
        _order(conn, "done-before", _at(3, 8), "NEGATIVE")
        _event(conn, "done-before-e1", "done-before", _at(3, 8, 13), "NEGATIVE")
        _existing_result(conn, "done-before-e1", "done-before", COVID19_DISEASE_ID, "NEGATIVE", _at(9, 1))
        # Multiplex era: no legacy result columns; the app wrote COVID-19 and Flu A rows.
        _order(conn, "multiplex", _at(3, 10), None)
        _event(conn, "multiplex-e1", "multiplex", _at(3, 10, 13), None)
        _existing_result(conn, "multiplex-e1", "multiplex", COVID19_DISEASE_ID, "POSITIVE", _at(3, 10, 13))
        _existing_result(conn, "multiplex-e1", "multiplex", FLU_A_DISEASE_ID, "NEGATIVE", _at(3, 10, 13))


def _expected_new_rows():
    covid = COVID19_DISEASE_ID
    snomed = {"POSITIVE": "260373001", "NEGATIVE": "260415000", "UNDETERMINED": "455371000124106"}

    def row(event, order, result, created, updated):
        return (_id(event) if event else None, _id(order), covid, snomed[result], result, False,
                created, USER, updated, USER)

    return {
        # order pass: audit columns from the order; pending order → NULL event
        row(None, "pending-with-result", "POSITIVE", _at(3, 2), _at(3, 2)),
        row("submitted-e1", "submitted", "NEGATIVE", _at(3, 4), _at(3, 4, 13)),
        row("corrected-e3", "corrected", "UNDETERMINED", _at(3, 5), _at(4, 2)),
        row("removed-e2", "removed", "POSITIVE", _at(3, 6), _at(3, 9)),
        # event pass: the superseded events, audit columns from the event
        row("corrected-e1", "corrected", "POSITIVE", _at(3, 5, 13), _at(3, 5, 13)),
        row("corrected-e2", "corrected", "NEGATIVE", _at(3, 20), _at(3, 20)),
        row("removed-e1", "removed", "POSITIVE", _at(3, 6, 13), _at(3, 6, 13)),
    }


def _fingerprint(conn) -> dict[str, str]:
    """Content hashes of the tables the backfill must never change (existing results by id)."""
    queries = {
        "test_order": "SELECT md5(string_agg(t::text, ',' ORDER BY internal_id)) FROM test_order t",
        "test_event": "SELECT md5(string_agg(t::text, ',' ORDER BY internal_id)) FROM test_event t",
    }
    return {name: conn.execute(sa.text(q)).scalar_one() for name, q in queries.items()}


def _new_rows(conn, before_ids) -> set[tuple]:
    """Result rows other than those with the given ids, without their (random) internal_id."""
    return {tuple(r) for r in conn.execute(sa.text(RESULT_ROW + " WHERE NOT (internal_id = ANY(:ids))"),
                                          {"ids": list(before_ids)})}


def _results_by_id(conn) -> dict:
    return {r[0]: tuple(r) for r in conn.execute(sa.text("SELECT r.internal_id, r::text FROM result r"))}


def test_both_passes_insert_exactly_the_rule_rows(engine, rule_cases):
    with engine.connect() as conn:
        before_ids = _results_by_id(conn)
        before = _fingerprint(conn)
        counts = backfill_results(conn, *EVERYTHING)
        after_ids = _results_by_id(conn)
        assert {k: after_ids[k] for k in before_ids} == before_ids, "existing results changed"
        assert _fingerprint(conn) == before, "orders or events changed"
        new = _new_rows(conn, before_ids)
    assert new == _expected_new_rows()
    assert counts.order_rows == 4 and counts.event_rows == 3 and counts.order_rows_from_event_pass == 0
    assert counts.order_pass["2024-03"] == 4 and counts.event_pass["2024-03"] == 3
    assert all(row[2] == COVID19_DISEASE_ID for row in new), "never a Flu row for legacy data"


def test_row_ids_are_version_3_uuids_of_their_source_row(engine, rule_cases):
    # uuid.uuid3(pass namespace, str(source id)): recomputable anywhere, valid for any UUID library.
    with engine.connect() as conn:
        before = set(_results_by_id(conn))
        counts = backfill_results(conn, *EVERYTHING)
        rows = [r for r in conn.execute(sa.text("SELECT internal_id, test_order_id, test_event_id FROM result"))
                if r.internal_id not in before]
    order_rows = [r for r in rows if r.internal_id == uuid.uuid3(results_family.ORDER_ROW_NAMESPACE,
                                                                  str(r.test_order_id))]
    event_rows = [r for r in rows if r.test_event_id is not None
                  and r.internal_id == uuid.uuid3(results_family.EVENT_ROW_NAMESPACE, str(r.test_event_id))]
    assert (len(order_rows), len(event_rows)) == (counts.order_rows, counts.event_rows) == (4, 3)
    assert all(r.internal_id.version == 3 and r.internal_id.variant == uuid.RFC_4122 for r in rows)


def test_rerun_is_a_no_op(engine, rule_cases):
    with engine.connect() as conn:
        backfill_results(conn, *EVERYTHING)
        first = _results_by_id(conn)
        again = backfill_results(conn, *EVERYTHING, batch_size=2)
        assert again.inserted == 0
        assert _results_by_id(conn) == first


def test_months_in_any_order_give_the_same_rows(engine, rule_cases):
    # April's correction event runs first: its order's row must still come from the order (rule 1).
    with engine.connect() as conn:
        before_ids = list(_results_by_id(conn))
        april = backfill_results(conn, *APRIL)
        assert april.order_rows_from_event_pass == 1  # "corrected" (a March order) got its order row first
        march = backfill_results(conn, *MARCH)
        new = _new_rows(conn, before_ids)
    assert new == _expected_new_rows()
    assert april.inserted + march.inserted == len(_expected_new_rows())
    both = results_family.BackfillCounts()
    for counts in (april, march):
        both.add(counts)
    assert both.inserted == len(_expected_new_rows()) and both.batches == april.batches + march.batches
    assert both.order_pass["2024-03"] == march.order_pass["2024-03"] + april.order_pass.get("2024-03", 0)


def test_the_check_names_what_is_missing(engine, rule_cases):
    with engine.connect() as conn:
        missing = find_missing_results(conn)
        assert (missing.orders, missing.events) == (4, 6)  # the current events count until the order pass
        assert str(_id("pending-with-result")) in missing.sample_order_ids
        assert ("order", "2024-03", 4) in missing.by_month and ("event", "2024-04", 1) in missing.by_month
        backfill_results(conn, *MARCH)
        # April's correction is its order's current event: March's order row carries it.
        assert find_missing_results(conn).total == 0
        assert backfill_results(conn, *APRIL).inserted == 0


def test_months_bigger_than_a_batch_are_covered_in_several_batches(engine):
    # Ties on created_at straddle batch boundaries, where the keyset's second key (internal_id) decides.
    with engine.begin() as conn:
        for month in (3, 4):
            start = datetime(2024, month, 1, tzinfo=UTC)
            for i in range(23):
                # 9 on the window's start, 9 at one mid-month instant, 5 at distinct instants
                created = start + (timedelta(0) if i < 9 else timedelta(days=10) if i < 18
                                   else timedelta(days=11, minutes=i))
                name = f"m{month}-o{i}"
                _order(conn, name, created, "POSITIVE" if i % 5 else None)
                _event(conn, f"{name}-e0", name, created, "POSITIVE" if i % 5 else None, current=i % 3 != 0)
                if i % 3 == 0:  # corrected: the superseded ORIGINAL gets its own row in the event pass
                    _event(conn, f"{name}-e1", name, created, "NEGATIVE" if i % 5 else None, "CORRECTED",
                           f"{name}-e0")
    window = (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC))
    with engine.connect() as conn:
        counts = backfill_results(conn, *window, batch_size=4)
        # 18 orders with a result per month (i % 5 != 0); events: 18 with a result + 6 corrections with one.
        assert counts.order_pass == {"2024-03": 18, "2024-04": 18}
        assert counts.event_pass == {"2024-03": 6, "2024-04": 6}  # the superseded ORIGINALs with a result
        assert counts.batches == 2 * (5 + 7)  # a month: 5 order batches (18 rows), 7 event batches (24 rows)
        assert find_missing_results(conn).total == 0
        rows = _results_by_id(conn)
        again = backfill_results(conn, *window, batch_size=4)
        assert again.inserted == 0 and again.scanned == counts.scanned
        assert _results_by_id(conn) == rows
        # The same rows, with the same ids, from one batch a month.
        conn.execute(sa.text("DELETE FROM result"))
        conn.commit()
        assert backfill_results(conn, *window).inserted == counts.inserted
        assert _results_by_id(conn) == rows


# --------------------------------------------------------------------------- generated data


def _seed(database_url, scale=0.3, seed=7):
    with psycopg.connect(libpq_url(database_url), prepare_threshold=None) as conn:
        with conn.transaction():
            ctx = SynthContext(conn=conn, rng=random.Random(seed), scale=scale,
                               now=datetime(2026, 11, 20, 12, tzinfo=UTC), today=datetime(2026, 11, 20).date())
            from orchestration.synthetic import results as generator

            generator.generate(ctx)
    return ctx.stats


def _summary(conn) -> dict:
    return dict(conn.execute(sa.text("""
        SELECT 'orders', count(*) FROM test_order UNION ALL
        SELECT 'pending with result', count(*) FROM test_order WHERE test_event_id IS NULL AND result IS NOT NULL
        UNION ALL SELECT 'corrected', count(*) FROM test_event WHERE correction_status = 'CORRECTED'
        UNION ALL SELECT 'removed', count(*) FROM test_event WHERE correction_status = 'REMOVED'
        UNION ALL SELECT 'chained corrections', count(*) FROM test_event e JOIN test_event p
            ON p.internal_id = e.prior_corrected_test_event_id WHERE p.correction_status = 'CORRECTED'
        UNION ALL SELECT 'months', count(DISTINCT date_trunc('month', created_at)) FROM test_order
        UNION ALL SELECT 'existing results', count(*) FROM result
    """)).all())


def test_generator_covers_the_cases_and_the_backfill_completes_them(engine, database_url):
    _seed(database_url)
    with engine.connect() as conn:
        summary = _summary(conn)
        assert summary["orders"] == 1500 and summary["months"] >= 24
        assert min(summary["pending with result"], summary["corrected"], summary["removed"],
                   summary["chained corrections"], summary["existing results"]) > 0, summary
        before_ids = _results_by_id(conn)
        before = _fingerprint(conn)
        assert find_missing_results(conn).total > 0
        # Months in reverse order and tiny batches, against one ranged run below.
        months = sorted({r[0] for r in conn.execute(sa.text(
            "SELECT date_trunc('month', created_at AT TIME ZONE 'UTC') FROM test_order "
            "UNION SELECT date_trunc('month', created_at AT TIME ZONE 'UTC') FROM test_event"))}, reverse=True)
        for month in months:
            start = month.replace(tzinfo=UTC)
            end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
            backfill_results(conn, start, end, batch_size=37)
        assert find_missing_results(conn).total == 0
        assert _fingerprint(conn) == before
        after_ids = _results_by_id(conn)
        assert {k: after_ids[k] for k in before_ids} == before_ids
        reverse_rows = _new_rows(conn, before_ids)
        # Same data, one ranged run: the rows it inserts are the same (only internal_id differs).
        conn.execute(sa.text("DELETE FROM result WHERE NOT (internal_id = ANY(:ids))"), {"ids": list(before_ids)})
        conn.commit()
        ranged = backfill_results(conn, *EVERYTHING)
        assert _new_rows(conn, before_ids) == reverse_rows
        assert ranged.inserted == len(reverse_rows) and ranged.order_rows_from_event_pass == 0
        flu = conn.execute(sa.text("SELECT count(*) FROM result WHERE disease_id <> :c AND NOT "
                                   "(internal_id = ANY(:ids))"), {"c": COVID19_DISEASE_ID,
                                                                  "ids": list(before_ids)}).scalar_one()
        assert flu == 0


# --------------------------------------------------------------------------- Dagster


def _defs_assets():
    return [*results_family.assets, *results_family.asset_checks]


def _check_result(run):
    evaluations = run.get_asset_check_evaluations()
    assert len(evaluations) == 1
    return evaluations[0]


def test_materialize_one_month_then_a_range_as_one_run(engine, database_url, resources, rule_cases):
    instance = DagsterInstance.ephemeral()
    april = materialize(_defs_assets(), partition_key="2024-04-01", resources=resources, instance=instance)
    assert april.success
    metadata = april.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["rows_inserted_order_pass"].value == 0 and metadata["rows_inserted_event_pass"].value == 0
    assert metadata["order_rows_inserted_by_event_pass"].value == 1  # the March order of April's correction
    check = _check_result(april)
    assert not check.passed  # March is not backfilled yet
    assert (check.metadata["orders_missing"].value, check.metadata["events_missing"].value) == (3, 5)
    assert str(_id("pending-with-result")) in check.metadata["sample_order_ids"].value
    assert {"source": "event", "month": "2024-03", "missing": 5} in [  # a MetadataValue.table
        r.data for r in check.metadata["missing_per_month"].records]

    # A range of months is one run (BackfillPolicy.single_run): the tags Dagster sets for a ranged backfill.
    ranged = materialize(_defs_assets(), resources=resources, instance=instance, tags={
        "dagster/asset_partition_range_start": "2024-02-01", "dagster/asset_partition_range_end": "2024-05-01"})
    assert ranged.success
    events = ranged.get_asset_materialization_events()
    assert {e.partition for e in events} == {"2024-02-01", "2024-03-01", "2024-04-01", "2024-05-01"}
    metadata = events[0].materialization.metadata
    assert metadata["months"].value == 4 and metadata["rows_inserted"].value == 6
    assert {"month": "2024-03", "order_pass": 3, "event_pass": 3} in [
        r.data for r in metadata["rows_inserted_per_month"].records]
    assert metadata["dagster/table_name"].value == "public.result"
    assert _check_result(ranged).passed
    with engine.connect() as conn:
        assert _new_rows(conn, []) >= _expected_new_rows()
        assert conn.execute(sa.text("SELECT count(*) FROM result")).scalar_one() == len(_expected_new_rows()) + 3


def test_definitions_hold_the_family():
    from orchestration.definitions import defs

    assert defs.resolve_job_def("multiplex_backfill") is not None
    result_asset = defs.resolve_assets_def("result")
    assert result_asset.backfill_policy is not None and result_asset.partitions_def is not None
