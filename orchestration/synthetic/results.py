"""SimpleReport test orders and events for the multiplex results backfill (domain.md §5).

Over 26 months before `now`: orders with a legacy result (POSITIVE/NEGATIVE/UNDETERMINED) or none;
pending orders (no event, some with a result already entered); submitted orders with an ORIGINAL event,
some corrected (one or two CORRECTED events chained by prior_corrected_test_event_id), some removed (a REMOVED
event); corrections often land in a later month than the order. Orders of the last months are
"multiplex era": no legacy result columns, their `result` rows (COVID-19, Flu A, Flu B) written by the
app. A few legacy orders were already backfilled by an earlier partial run. Demo ≈ 5,000 orders.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from orchestration.schema import (
    COVID19_DISEASE_ID,
    FLU_A_DISEASE_ID,
    FLU_B_DISEASE_ID,
    SNOMED_BY_TEST_RESULT,
)

ORDERS = 5_000
MONTHS = 26
MULTIPLEX_ERA_DAYS = 60  # orders this recent have result rows written by the app itself

ORDER_COLUMNS = ["internal_id", "created_at", "created_by", "updated_at", "updated_by", "result"]
EVENT_COLUMNS = ["internal_id", "created_at", "created_by", "updated_at", "updated_by", "test_order_id", "result",
                 "correction_status", "prior_corrected_test_event_id"]
RESULT_COLUMNS = ["internal_id", "created_at", "created_by", "updated_at", "updated_by", "is_deleted",
                  "test_event_id", "test_order_id", "disease_id", "result", "test_result"]


def _uuid(rng) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _outcome(rng) -> str:
    return rng.choices(("NEGATIVE", "POSITIVE", "UNDETERMINED"), weights=(80, 15, 5))[0]


def generate(ctx) -> None:
    rng = ctx.rng
    users = [_uuid(rng) for _ in range(25)]  # api_user ids
    span = timedelta(days=MONTHS * 30.5)
    era_start = ctx.now - timedelta(days=MULTIPLEX_ERA_DAYS)
    orders, events, results, current = [], [], [], []

    for _ in range(ctx.n(ORDERS)):
        order_id = _uuid(rng)
        created = ctx.now - span + timedelta(seconds=rng.uniform(0, span.total_seconds()))
        creator = rng.choice(users)
        multiplex = created >= era_start
        kind = rng.random()
        if kind < 0.08:  # pending: in the queue, never submitted; a result may already be entered
            result = None if (multiplex or rng.random() < 0.6) else _outcome(rng)
            orders.append((order_id, created, creator, created, creator, result))
            continue
        # Submitted: an ORIGINAL event, then maybe corrections and a removal (each a new immutable event).
        at = created + timedelta(minutes=rng.uniform(15, 45))
        outcome = None if kind < 0.11 else _outcome(rng)  # a few legacy submissions carry no result
        chain = [("ORIGINAL", outcome, at)]
        if outcome is not None and rng.random() < 0.12:
            for _ in range(1 if rng.random() < 0.8 else 2):
                at = at + timedelta(days=rng.uniform(0.5, 40))
                outcome = rng.choice([o for o in SNOMED_BY_TEST_RESULT if o != outcome])
                chain.append(("CORRECTED", outcome, at))
        if outcome is not None and rng.random() < 0.04:
            at = at + timedelta(days=rng.uniform(0.5, 40))
            chain.append(("REMOVED", outcome, at))  # a removal records the removed test's result
        prior = None
        for status, event_result, event_at in chain:
            event_id = _uuid(rng)
            by = rng.choice(users)
            events.append((event_id, event_at, by, event_at, by, order_id,
                           None if multiplex else event_result, status, prior))
            if multiplex and event_result is not None:  # the app writes one row per disease per event
                for disease in (COVID19_DISEASE_ID, FLU_A_DISEASE_ID, FLU_B_DISEASE_ID):
                    flu_result = event_result if disease == COVID19_DISEASE_ID else "NEGATIVE"
                    results.append((_uuid(rng), event_at, by, event_at, by, False, event_id, order_id, disease,
                                    SNOMED_BY_TEST_RESULT[flu_result], flu_result))
            prior = event_id
        last_at = chain[-1][2]
        orders.append((order_id, created, creator, last_at, rng.choice(users), None if multiplex else outcome))
        current.append((order_id, prior))
        if not multiplex and outcome is not None and rng.random() < 0.03:
            # Backfilled already by an earlier partial run (its own audit values): must stay as it is.
            results.append((_uuid(rng), ctx.now - timedelta(days=3), None, ctx.now - timedelta(days=3), None, False,
                            prior, order_id, COVID19_DISEASE_ID, SNOMED_BY_TEST_RESULT[outcome], outcome))

    # test_order and test_event refer to each other: orders first, then events, then each order's current event.
    ctx.copy("test_order", ORDER_COLUMNS, orders)
    ctx.copy("test_event", EVENT_COLUMNS, events)
    ctx.conn.execute("CREATE TEMP TABLE current_test_event (test_order_id uuid, test_event_id uuid) ON COMMIT DROP")
    ctx.copy("current_test_event", ["test_order_id", "test_event_id"], current)
    ctx.stats.rows.pop("current_test_event", None)  # scaffolding, not data
    ctx.conn.execute("UPDATE test_order AS o SET test_event_id = c.test_event_id "
                     "FROM current_test_event AS c WHERE o.internal_id = c.test_order_id")
    ctx.copy("result", RESULT_COLUMNS, results)
