"""The letters family (domain.md §4): daily print batches, the §4.5 alert, returned letters, contact lists.

keys.py        where things live in S3 (PDF names and prefixes, batch, zip, manifest and contact-list keys)
selection.py   rule 2: the letters a collation takes
pdfs.py        rule 3: locating and fetching the PDFs
batches.py     rules 4–6: grouping, planning, zips and manifests, marking letters `sending`
collation.py   the whole collation of a print day, and the print volumes
still_created.py  the §4.5 alert on letters still `created`
contact_lists.py  returned-letter summary and contact-list objects
definitions.py    Dagster assets, checks and jobs
"""

from assets.letters.batches import (
    MAX_BATCH_BYTES,
    MAX_BATCH_LETTERS,
    PlannedBatch,
    complete_batches,
    group_into_batches,
    plan_batches,
)
from assets.letters.collation import CollationResult, collate_letters, deadline_for_print_date
from assets.letters.contact_lists import (
    archive_contact_list,
    returned_letter_summary,
    store_contact_list,
    sweep_archived_contact_lists,
)
from assets.letters.definitions import (
    archive_contact_list_job,
    assets,
    asset_checks,
    contact_list_objects_asset,
    every_waiting_letter_collatable,
    jobs,
    letter_batches_asset,
    letter_collation_job,
    letters_still_created_alert_job,
    no_letter_in_two_batches,
    no_letter_sending_without_zip,
    returned_letter_summary_asset,
)
from assets.letters.keys import (
    POSTAGE_CODES,
    batch_hash,
    batch_zip_name,
    contact_list_key,
    manifest_key,
    object_exists,
    pdf_file_name,
    pdf_location,
    pdf_prefix,
    zip_key,
)
from assets.letters.selection import Letter, select_letters, unbatchable_letters
from assets.letters.still_created import record_letters_still_created_alert

__all__ = [
    "MAX_BATCH_BYTES", "MAX_BATCH_LETTERS", "POSTAGE_CODES", "CollationResult", "Letter", "PlannedBatch",
    "archive_contact_list", "archive_contact_list_job", "asset_checks", "assets", "batch_hash", "batch_zip_name", "collate_letters",
    "complete_batches", "contact_list_key", "contact_list_objects_asset", "deadline_for_print_date", "every_waiting_letter_collatable",
    "group_into_batches", "jobs", "letter_batches_asset", "letter_collation_job", "letters_still_created_alert_job",
    "manifest_key", "no_letter_in_two_batches", "no_letter_sending_without_zip", "object_exists", "pdf_file_name",
    "pdf_location", "pdf_prefix", "plan_batches", "record_letters_still_created_alert", "returned_letter_summary",
    "returned_letter_summary_asset", "select_letters", "store_contact_list", "unbatchable_letters", "sweep_archived_contact_lists",
    "zip_key",
]
