"""Dagster wiring of the letters family: the collation asset and its checks, the returned-letters and
contact-list assets, the §4.5 alert job."""

import uuid
from datetime import date, timedelta

import sqlalchemy as sa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    Config,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    asset,
    asset_check,
    define_asset_job,
    job,
    op,
)
from dagster_aws.s3 import S3Resource

from assets.letters.collation import collate_letters, unbatchable_by_reason
from assets.letters.contact_lists import archive_contact_list, returned_letter_summary, sweep_archived_contact_lists
from assets.letters.keys import manifest_key, object_exists, zip_key
from assets.letters.pdfs import S3Access
from assets.letters.selection import ID_LIST_LIMIT, format_ids, unbatchable_letters
from assets.letters.still_created import record_letters_still_created_alert
from orchestration import schema
from orchestration.clock import letter_deadline, now_utc
from orchestration.metadata import family_spec, records_table, row_count, s3_objects, s3_uri, source_spec, table_result
from orchestration.partitions import print_days_partitions
from orchestration.schema import LetterBatchState
from resources.postgres import PostgresResource
from resources.s3 import S3Buckets

GROUP = "letters"
FAMILY = "letters"


# `notifications` and `services` are declared once, as source specs of the history family (assets/history.py);
# the collation depends on them by key so the lineage shows one node per table.
NOTIFICATIONS_SOURCE = AssetKey(["notify", "notifications"])
SERVICES_SOURCE = AssetKey(["notify", "services"])
letter_pdfs_source = source_spec(
    AssetKey(["notify", "letters_pdf_bucket"]), FAMILY, kinds={"s3"}, group_name=GROUP,
    description="Letter PDFs in the letters-PDF bucket, at `{folder}/NOTIFY.{REFERENCE}…PDF` (§4.4 rule 3).")
returned_letters_source = source_spec(
    AssetKey(["notify", "returned_letters"]), FAMILY, table=schema.returned_letters, group_name=GROUP,
    description="Operational `returned_letters`: letters the printer reported as returned.")
contact_lists_source = source_spec(
    AssetKey(["notify", "service_contact_list"]), FAMILY, table=schema.service_contact_list, group_name=GROUP,
    description="Operational `service_contact_list` rows; each list's CSV is in the contact-lists bucket.")


def _print_day(context: AssetExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)


@asset(
    name="letter_batches",
    group_name=GROUP,
    partitions_def=print_days_partitions,
    pool="letter_collation",
    deps=[NOTIFICATIONS_SOURCE, SERVICES_SOURCE, letter_pdfs_source],
    kinds={"postgres", "s3"},
    freshness_policy=FreshnessPolicy.cron(deadline_cron="0 19 * * *", lower_bound_delta=timedelta(hours=1, minutes=30),
                                          timezone="Europe/London"),
    description="Daily letter collation (§4): letters created before 17:30 London become zip batches and JSON "
                "manifests in the batches bucket; letters move to `sending`; `letter_print_volumes` per postage.",
    **family_spec(FAMILY, schema.letter_batches),
)
def letter_batches_asset(context: AssetExecutionContext, postgres: PostgresResource, s3: S3Resource,
                         buckets: S3Buckets) -> MaterializeResult:
    day = _print_day(context)
    with postgres.connect() as conn:
        result = collate_letters(conn, s3.get_client(), buckets, day, now_utc(), reads=S3Access.of_resource(s3),
                                 echo=context.log.info)
        batches = row_count(conn, schema.letter_batches, schema.letter_batches.c.print_date == day)
    zips = sorted(result.zip_keys)
    objects = [key for z in zips for key in (z, manifest_key(day, z.rsplit("/", 1)[-1]))]
    metadata = {
        # dagster/row_count: the print day's batches; dagster/uri: its prefix; `keys`: zips and manifests.
        **table_result(schema.letter_batches, rows=batches),
        **s3_objects(buckets.letter_batches, f"{day.isoformat()}/", objects, shown=2 * ID_LIST_LIMIT),
        "print_date": day.isoformat(),
        "deadline": result.deadline.isoformat(),
        "letters_selected": result.selected,
        "letters_missing_pdf": len(result.missing),
        "letters_unbatchable": len(result.unbatchable),
        "unbatchable_letters": MetadataValue.json(unbatchable_json(result.unbatchable)),
        **{f"letters_unbatchable_{reason}": len(ids) for reason, ids in unbatchable_by_reason(result).items()},
        "letters_invalid_pdf": len(result.invalid),
        "invalid_pdf_notification_ids": [str(i) for i in result.invalid[:ID_LIST_LIMIT]],
        "letters_lookup_errors": len(result.lookup_errors),
        "leftover_batches_finished": result.leftovers_finished,
        "leftover_batches_discarded": result.leftovers_discarded,
        "batches_uploaded": len(result.zip_keys),
        "letters_sending": result.letters_sending,
        "s3_list_calls": result.list_calls,
        "zip_keys": MetadataValue.json(zips[:ID_LIST_LIMIT]),
        "print_volumes": records_table(["postage", "letters", "sheets"],
                                       [[p, v["letters"], v["sheets"]] for p, v in result.volumes.items()]),
        **{f"letters_{p.replace('-', '_')}": v["letters"] for p, v in result.volumes.items()},
        **{f"sheets_{p.replace('-', '_')}": v["sheets"] for p, v in result.volumes.items()},
        **{f"seconds_{k}": round(v, 3) for k, v in result.seconds.items()},
    }
    return MaterializeResult(metadata=metadata)


@asset_check(asset=letter_batches_asset, name="no_letter_sending_without_zip",
             description="Every letter sent to the printer since collation began is in an uploaded batch whose "
                         "zip is in S3.")
def no_letter_sending_without_zip(postgres: PostgresResource, s3: S3Resource, buckets: S3Buckets) -> AssetCheckResult:
    client = s3.get_client()
    with postgres.connect() as conn:
        unbatched = conn.execute(sa.text("""
            SELECT n.id FROM notifications n
            WHERE n.notification_type = 'letter' AND n.notification_status = 'sending' AND n.sent_by = 'dvla'
              -- only letters sent since this project began collating; older ones were sent by upstream
              AND n.sent_at >= (SELECT min(created_at) FROM letter_batches)
              AND NOT EXISTS (SELECT 1 FROM letter_batch_items i JOIN letter_batches b ON b.id = i.batch_id
                              WHERE i.notification_id = n.id AND b.state = :uploaded)
            ORDER BY n.id LIMIT 1000"""), {"uploaded": int(LetterBatchState.UPLOADED)}).scalars().all()
        # Batches holding letters now sending: their zip must exist.
        batches = conn.execute(sa.text("""
            SELECT DISTINCT b.id, b.print_date, b.zip_name FROM letter_batches b
            JOIN letter_batch_items i ON i.batch_id = b.id
            JOIN notifications n ON n.id = i.notification_id AND n.notification_status = 'sending'
            ORDER BY b.id""")).all()
    without_zip = [bid for bid, day, name in batches if not object_exists(client, buckets.letter_batches, zip_key(day, name))]
    return AssetCheckResult(
        passed=not unbatched and not without_zip,
        severity=AssetCheckSeverity.ERROR,
        metadata={"sending_letters_not_in_uploaded_batch": len(unbatched),
                  "notification_ids": [str(i) for i in unbatched[:ID_LIST_LIMIT]],
                  "batches_checked": len(batches), "batches_without_zip": [str(i) for i in without_zip[:ID_LIST_LIMIT]]})


def unbatchable_json(unbatchable: list) -> list[dict]:
    return [{"notification_id": str(i), "reasons": reasons} for i, reasons in unbatchable[:ID_LIST_LIMIT]]


@asset_check(asset=letter_batches_asset, name="every_waiting_letter_collatable",
             description="Every normal letter waiting for print before the last 17:30 deadline can be collated as it "
                         "stands; the others are named by notification id and reason (no_reference, no_postage, "
                         "no_sheets, reference_not_a_key). Letters whose PDF has not arrived are not counted: a "
                         "later run takes them.")
def every_waiting_letter_collatable(postgres: PostgresResource) -> AssetCheckResult:
    with postgres.connect() as conn:
        unbatchable = unbatchable_letters(conn, letter_deadline(now_utc()))
    counts: dict[str, int] = {}
    for _, reasons in unbatchable:
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
    return AssetCheckResult(
        passed=not unbatchable, severity=AssetCheckSeverity.WARN,
        metadata={"letters_unbatchable": len(unbatchable), **{f"letters_{r}": n for r, n in sorted(counts.items())},
                  "unbatchable_letters": MetadataValue.json(unbatchable_json(unbatchable))})


@asset_check(asset=letter_batches_asset, name="no_letter_in_two_batches",
             description="No notification id appears in two batches, nor twice in batch manifests' tables.")
def no_letter_in_two_batches(postgres: PostgresResource) -> AssetCheckResult:
    with postgres.connect() as conn:
        dupes = conn.execute(sa.text("""
            SELECT notification_id FROM letter_batch_items GROUP BY notification_id HAVING count(DISTINCT batch_id) > 1
            ORDER BY notification_id LIMIT 1000""")).scalars().all()
        counts_off = conn.execute(sa.text("""
            SELECT b.id FROM letter_batches b LEFT JOIN letter_batch_items i ON i.batch_id = b.id
            GROUP BY b.id HAVING count(i.notification_id) <> max(b.letter_count) OR count(i.notification_id) = 0
            ORDER BY b.id LIMIT 1000""")).scalars().all()
    return AssetCheckResult(
        passed=not dupes and not counts_off, severity=AssetCheckSeverity.ERROR,
        metadata={"letters_in_several_batches": [str(i) for i in dupes[:ID_LIST_LIMIT]],
                  "batches_with_wrong_or_zero_count": [str(i) for i in counts_off[:ID_LIST_LIMIT]]})


@asset(name="returned_letter_summary", group_name=GROUP, deps=[returned_letters_source], kinds={"postgres"},
       description="Returned letters: count per reported_at per service (newest first) and each service's most "
                   "recent report date (upstream's returned-letter summary).", **family_spec(FAMILY))
def returned_letter_summary_asset(context: AssetExecutionContext, postgres: PostgresResource) -> MaterializeResult:
    with postgres.connect() as conn:
        rows, latest = returned_letter_summary(conn)
    table = records_table(["reported_at", "service_id", "returned_letters"],
                          [[day.isoformat(), str(service), count] for service, day, count in rows[:200]])
    return MaterializeResult(metadata={
        "rows": len(rows),
        "returned_letters": sum(r[2] for r in rows),
        "services": len(latest),
        "most_recent_report": max(latest.values()).isoformat() if latest else "none",
        "summary": table,
    })


@asset(name="contact_list_objects", group_name=GROUP, deps=[contact_lists_source], kinds={"s3"},
       description="Contact-list CSVs in S3 match `service_contact_list`: archived lists' objects are deleted; "
                   "live lists missing their object are reported.", **family_spec(FAMILY))
def contact_list_objects_asset(context: AssetExecutionContext, postgres: PostgresResource, s3: S3Resource,
                               buckets: S3Buckets) -> MaterializeResult:
    bucket = buckets.contact_lists
    with postgres.connect() as conn:
        deleted, orphaned = sweep_archived_contact_lists(conn, s3.get_client(), bucket)
    if orphaned:
        context.log.warning(f"{len(orphaned)} live contact lists have no CSV in S3: {format_ids(orphaned)}")
    return MaterializeResult(metadata={"dagster/uri": MetadataValue.path(s3_uri(bucket)), "objects_deleted": deleted, "live_lists_without_object": len(orphaned),
                                       "live_list_ids_without_object": [str(i) for i in orphaned[:ID_LIST_LIMIT]]})


class ArchiveContactListConfig(Config):
    list_id: str  # the service_contact_list id


@op(name="archive_contact_list_and_csv",
    description="Archive one contact list and delete its CSV (`pso letters archive-contact-list LIST_ID`).")
def archive_contact_list_op(context: OpExecutionContext, config: ArchiveContactListConfig,
                            postgres: PostgresResource, s3: S3Resource, buckets: S3Buckets) -> None:
    try:
        list_id = uuid.UUID(config.list_id)
    except ValueError:
        raise Failure(description=f"not a contact list id: {config.list_id!r}", allow_retries=False) from None
    bucket = buckets.contact_lists
    with postgres.connect() as conn:
        if not archive_contact_list(conn, s3.get_client(), bucket, list_id):
            raise Failure(description=f"no such contact list: {list_id}", allow_retries=False)
        key = conn.execute(sa.select(schema.service_contact_list.c.s3_key)
                           .where(schema.service_contact_list.c.id == list_id)).scalar_one()
        conn.commit()
    context.log.info(f"contact list {list_id} archived; its CSV deleted")
    context.log_event(AssetMaterialization(
        asset_key="contact_list_objects", description=f"contact list {list_id} archived",
        metadata={"list_id": str(list_id), "archived": True, "objects_deleted": 1,
                  "dagster/uri": MetadataValue.path(s3_uri(bucket, key))}))


@job(name="archive_contact_list", description="Archive one contact list and delete its CSV "
                                              "(`pso letters archive-contact-list LIST_ID`).")
def archive_contact_list_job():
    archive_contact_list_op()


@op(description="Alert on normal letters still `created` past the previous day's 17:30 London deadline.")
def check_letters_still_created(context: OpExecutionContext, postgres: PostgresResource) -> int:
    with postgres.connect() as conn:
        return record_letters_still_created_alert(conn, now_utc(), context.run_id, echo=context.log.warning)


@job(name="letters_still_created_alert", description="07:00 UTC Mon–Fri: letters still created past the deadline (§4.5).")
def letters_still_created_alert_job():
    check_letters_still_created()


letter_collation_job = define_asset_job(
    "letter_collation", selection=[letter_batches_asset.key],
    description="The daily letter collation of one print day (17:50 London).")

assets: list = [letter_pdfs_source, returned_letters_source, contact_lists_source,
                letter_batches_asset, returned_letter_summary_asset, contact_list_objects_asset]
asset_checks: list = [no_letter_sending_without_zip, no_letter_in_two_batches, every_waiting_letter_collatable]
jobs: list = [letter_collation_job, letters_still_created_alert_job, archive_contact_list_job]
