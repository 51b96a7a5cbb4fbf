"""The families' own `pso` commands: explain, stats get, restore-hour, letters, prune.

Each command parses its arguments and either reads through the family's plain functions in `assets/`
(explain, stats get) or changes data as a Dagster run of the family's job (restore-hour, letters collate,
letters archive-contact-list, prune: `runs.py`); the rules live in `assets/`, not here. Family modules
are imported inside the commands so that `pso --help` and the core commands stay fast and keep working while a family module is broken.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import date, datetime, timezone

from orchestration.cli.environment import cli_settings
from orchestration.schema import PROGRAMME_TYPES, STATS_KINDS


# -- statuses: pso explain PATIENT_ID PROGRAMME_TYPE ---------------------------------------------

def cmd_explain(args) -> int:
    from assets.statuses import explain_statuses, format_explanation
    from orchestration.clock import london_today, now_utc
    from resources.postgres import make_engine

    settings = cli_settings()
    today = date.fromisoformat(args.today) if args.today else london_today(now_utc())
    with make_engine(settings.database_url).connect() as conn:
        try:
            explanation = explain_statuses(conn, args.patient_id, args.programme_type, today)
        except ValueError as error:
            print(f"pso explain: {error}")
            return 2
    print(format_explanation(explanation))
    return 0


# -- cohort stats: pso stats get UNIT --kind dialysis|demographics [--window w1|w2] -------------

def _json_default(value):
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def cmd_stats_get(args) -> int:
    from assets.cohort_stats import MissingFacilityError, get_facility_stats
    from orchestration.schema import StatsOutcome
    from resources.postgres import make_engine

    engine = make_engine(cli_settings().database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            read = get_facility_stats(conn, args.unit, args.kind, args.window)
    except MissingFacilityError as error:
        print(f"pso stats: {error}", file=sys.stderr)
        return 4
    entry = read.entry
    out = {**entry.key, **entry.values, "computed_at": entry.computed_at, "expires_at": entry.expires_at,
           "source": read.source, "outcome": StatsOutcome(entry.values["outcome"]).name.lower()}
    print(json.dumps(out, default=_json_default, indent=2))
    return 0 if entry.values["outcome"] == StatsOutcome.OK else 3  # 3 ≈ the API's 404 for an empty cohort


# -- history: pso restore-hour YYYY-MM-DDTHH ----------------------------------------------------

def parse_hour(value: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H").replace(tzinfo=timezone.utc)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a UTC hour as YYYY-MM-DDTHH, got {value!r}") from None


def cmd_restore_hour(args) -> int:
    """A run of the `restore_notification_history_hour` job for the hour's London day, visible in Dagster."""
    from assets.history import restore_partition

    from orchestration.cli.runs import open_instance, run_job

    cli_settings()
    hour = f"{args.hour:%Y-%m-%dT%H}"
    with open_instance() as instance:
        run = run_job(instance, RESTORE_JOB, partition_key=restore_partition(args.hour), command="restore-hour",
                      run_config={"ops": {"restore_deep_archived_hour": {"config": {"hour": hour}}}})
    if not run.success:
        print(f"pso restore-hour: {'; '.join(run.failures) or 'run failed'} (run {run.run_id})")
        return 1
    counts = run.materializations["notification_history"]
    print(f"restore   hour {hour}: {counts['objects']} object(s), {counts['rows_read']} rows read, "
          f"{counts['inserted']} inserted into notification_history (the rest were already there) (run {run.run_id})")
    return 0


RESTORE_JOB = "restore_notification_history_hour"


# -- letters: pso letters collate | archive-contact-list ----------------------------------------

def cmd_letters_collate(args) -> int:
    """A run of the `letter_collation` job for the print day (the schedule's job), visible in Dagster."""
    from orchestration.cli.runs import open_instance, run_job
    from orchestration.clock import now_utc, print_date

    cli_settings()
    day = date.fromisoformat(args.print_date) if args.print_date else print_date(now_utc())
    with open_instance() as instance:
        run = run_job(instance, "letter_collation", partition_key=day.isoformat(), command="letters collate")
    if not run.success:
        print(f"pso letters collate: run {run.run_id} failed: {'; '.join(run.failures) or 'see the run in Dagster'}")
        return 1
    figures = run.materializations.get("letter_batches", {})
    print(f"collated  print day {day}: {figures.get('letters_selected', 0)} letters selected, "
          f"{figures.get('batches_uploaded', 0)} batch(es), {figures.get('letters_sending', 0)} now sending "
          f"(run {run.run_id})")
    for key, value in sorted(figures.items()):
        if key.startswith("sheets_"):
            postage = key.removeprefix("sheets_")
            print(f"  {postage:<14} {figures.get('letters_' + postage, 0):>8} letters {value:>8} sheets")
    return 0


def cmd_archive_contact_list(args) -> int:
    """A run of the `archive_contact_list` job (archive the list, delete its CSV), visible in Dagster."""
    from orchestration.cli.runs import open_instance, run_job

    try:
        list_id = str(uuid.UUID(args.list_id))
    except ValueError:
        print(f"pso letters archive-contact-list: not a contact list id: {args.list_id!r}")
        return 2
    cli_settings()
    with open_instance() as instance:
        run = run_job(instance, "archive_contact_list", command="letters archive-contact-list",
                      run_config={"ops": {"archive_contact_list_and_csv": {"config": {"list_id": list_id}}}})
    if not run.success:
        print(f"pso letters archive-contact-list: {'; '.join(run.failures) or 'run failed'} (run {run.run_id})")
        return 1
    print(f"archived  contact list {list_id}; its CSV deleted (run {run.run_id})")
    return 0


# -- pruning: pso prune REPLICA [--maintenance [--force]] [--grace-hours H] ----------------------

PRUNE_JOBS = {"sync_group": ("replica_sync_group_prune_job", "replica_sync_group_prune"),
              "maintenance": ("replica_maintenance_job", "replica_maintenance")}


def cmd_prune(args) -> int:
    """A run of the replica's prune (or maintenance) job for its `replicas` partition, visible in Dagster."""
    from orchestration.cli.runs import open_instance, run_job
    from orchestration.partitions import replicas_partitions

    cli_settings()
    kind = "maintenance" if args.maintenance else "sync_group"
    job, asset_key = PRUNE_JOBS[kind]
    config = {"force": args.force} if args.maintenance else {"grace_hours": args.grace_hours}
    with open_instance() as instance:
        added = not instance.has_dynamic_partition(replicas_partitions.name, args.replica_id)
        if added:  # the replica_registry sensor would add it within a minute; the command cannot wait
            instance.add_dynamic_partitions(replicas_partitions.name, [args.replica_id])
        run = run_job(instance, job, partition_key=args.replica_id, command=f"prune {kind}",
                      run_config={"ops": {asset_key: {"config": config}}})
        if added and not run.success:
            instance.delete_dynamic_partition(replicas_partitions.name, args.replica_id)
    if not run.success:
        print(f"pso prune: {'; '.join(run.failures) or 'run failed'} (run {run.run_id})")
        return 2
    figures = run.materializations[asset_key]
    if figures.get("skipped_reason"):
        print(f"replica {args.replica_id}: {kind} skipped: {figures['skipped_reason']} (run {run.run_id})")
        return 0
    print(f"replica {args.replica_id}: {kind} deleted {figures['rows_deleted']} rows "
          f"(prune_runs id {figures['prune_run_id']}, run {run.run_id})")
    for table, count in sorted(figures["deleted"].items()):
        print(f"  {table:<28} {count:>10,}")
    return 0


def add_family_commands(sub) -> None:
    explain = sub.add_parser("explain", help="why a patient's cached statuses for a programme are what they are")
    explain.add_argument("patient_id", type=int)
    explain.add_argument("programme_type", choices=sorted(PROGRAMME_TYPES))
    explain.add_argument("--today", help="London date to explain for (default: today)")
    explain.set_defaults(func=cmd_explain)

    stats = sub.add_parser("stats", help="renal unit cohort stats (read-through cache)")
    stats_sub = stats.add_subparsers(dest="stats_command", required=True)
    get = stats_sub.add_parser("get", help="print a unit's stats as JSON: cached when fresh, else computed and stored")
    get.add_argument("unit", help="facility code")
    get.add_argument("--kind", choices=list(STATS_KINDS), default="dialysis")
    get.add_argument("--window", choices=["w1", "w2"], default="w1")
    get.set_defaults(func=cmd_stats_get)

    restore = sub.add_parser("restore-hour", help="re-import a deep-archived hour of notification_history from S3")
    restore.add_argument("hour", type=parse_hour, help="UTC hour, YYYY-MM-DDTHH")
    restore.set_defaults(func=cmd_restore_hour)

    letters = sub.add_parser("letters", help="letter collation and contact lists")
    letters_sub = letters.add_subparsers(dest="letters_command", required=True)
    collate = letters_sub.add_parser("collate", help="collate a print day now, as a run of the letter_collation job "
                                     "(default: the latest day whose deadline passed)")
    collate.add_argument("--print-date", help="YYYY-MM-DD (London)")
    collate.set_defaults(func=cmd_letters_collate)
    archive = letters_sub.add_parser("archive-contact-list", help="archive a contact list and delete its CSV")
    archive.add_argument("list_id")
    archive.set_defaults(func=cmd_archive_contact_list)

    prune = sub.add_parser("prune", help="prune one replica now, as a run of its job (sync-group prune, or --maintenance)")
    prune.add_argument("replica_id")
    prune.add_argument("--maintenance", action="store_true", help="the weekly purge instead of the sync-group prune")
    prune.add_argument("--force", action="store_true", help="with --maintenance: run even if not due")
    prune.add_argument("--grace-hours", type=float, default=24.0, help="sync-group switch grace (default 24)")
    prune.set_defaults(func=cmd_prune)
