"""Stats as a person reads them in the Dagster UI: run metadata as `MetadataValue.table`s, one row per
window and category, so the UI renders, sorts and compares them (no hand-built markdown)."""

from __future__ import annotations

from typing import Any

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from assets.cohort_stats.dialysis import MODALITIES

Labelled = list[tuple[str, dict[str, Any]]]  # (window label, the entry's value columns)

_WINDOW = [TableColumn("window", "string"), TableColumn("from", "string"), TableColumn("to", "string")]
DIALYSIS_SCHEMA = TableSchema(columns=[*_WINDOW, TableColumn("modality", "string"), TableColumn("all", "int"),
                                       TableColumn("incident", "int"), TableColumn("prevalent", "int")])
FREQUENCY_SCHEMA = TableSchema(columns=[TableColumn("window", "string"), TableColumn("sessions_per_week", "string"),
                                        TableColumn("patients", "int", description="prevalent in-centre HD patients")])
DEMOGRAPHICS_SCHEMA = TableSchema(columns=[TableColumn("window", "string"), TableColumn("on", "string"),
                                           TableColumn("measure", "string"), TableColumn("category", "string"),
                                           TableColumn("patients", "int")])
SKIPPED_SCHEMA = TableSchema(columns=[TableColumn("unit", "string"), TableColumn("reason", "string")])


def _window(label: str, payload: dict[str, Any] | None) -> dict[str, Any]:
    if not payload:
        return {"window": label, "from": None, "to": None}
    return {"window": label, "from": payload["from_time"][:10], "to": payload["to_time"][:10]}


def dialysis_tables(labelled: Labelled) -> dict[str, MetadataValue]:
    """{"": modalities by window, " sessions/week": the in-centre frequency histogram by window}."""
    rows, freq = [], []
    for label, values in labelled:
        p = values.get("payload")
        if not p:
            rows.append({**_window(label, p), "modality": "(empty cohort)", "all": 0, "incident": 0, "prevalent": 0})
            continue
        for m in MODALITIES:
            rows.append({**_window(label, p), "modality": m, "all": p["all"][m], "incident": p["incident"][m],
                         "prevalent": p["prevalent"][m]})
        rows.append({**_window(label, p), "modality": "Total", **{s: sum(p[s].values())
                                                                  for s in ("all", "incident", "prevalent")}})
        f = p["incentre_dialysis_frequency"]
        edges = f["bin_edges"]
        freq += [{"window": label, "sessions_per_week": f"{edges[i]:g}–{edges[i + 1]:g}" + (" and above" if i == 13 else ""),
                  "patients": n} for i, n in enumerate(f["counts"])]
    tables = {"": MetadataValue.table([TableRecord(r) for r in rows], schema=DIALYSIS_SCHEMA)}
    if freq:
        tables[" sessions/week"] = MetadataValue.table([TableRecord(r) for r in freq], schema=FREQUENCY_SCHEMA)
    return tables


def age_bands(ages: dict[str, int]) -> dict[str, int]:
    """Whole-year ages into ten-year bands (0–9, 10–19, …), then Unknown."""
    bands: dict[str, int] = {}
    for age, n in sorted(((int(a), n) for a, n in ages.items() if a != "Unknown")):
        band = f"{age // 10 * 10}–{age // 10 * 10 + 9}"
        bands[band] = bands.get(band, 0) + n
    bands["Unknown"] = ages.get("Unknown", 0)
    return bands


def demographics_tables(labelled: Labelled) -> dict[str, MetadataValue]:
    """{"": gender, ethnic group and age band counts by window}."""
    rows = []
    for label, values in labelled:
        p = values.get("payload")
        if not p:
            rows.append({"window": label, "on": None, "measure": "(empty cohort)", "category": None, "patients": 0})
            continue
        for measure, counts in (("gender", p["gender"]), ("ethnic group", p["ethnic_group"]),
                                ("age band", age_bands(p["age"]))):
            rows += [{"window": label, "on": p["on_date"], "measure": measure, "category": c, "patients": n}
                     for c, n in counts.items()]
    return {"": MetadataValue.table([TableRecord(r) for r in rows], schema=DEMOGRAPHICS_SCHEMA)}


def skipped_table(skipped: dict[str, str]) -> MetadataValue:
    return MetadataValue.table([TableRecord({"unit": u, "reason": r}) for u, r in skipped.items()],
                               schema=SKIPPED_SCHEMA)


TABLES = {"dialysis": dialysis_tables, "demographics": demographics_tables}
