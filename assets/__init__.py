"""One module per family; each exports `assets` (incl. its source AssetSpecs), `asset_checks` and `jobs`."""

from assets import cohort_stats, history, letters, pruning, results, statuses

FAMILIES = [statuses, cohort_stats, history, pruning, letters, results]

ALL_ASSETS = [a for family in FAMILIES for a in family.assets]
ALL_ASSET_CHECKS = [c for family in FAMILIES for c in family.asset_checks]
ALL_JOBS = [j for family in FAMILIES for j in family.jobs]
