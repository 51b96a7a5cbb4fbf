"""Stats as a person reads them in the Dagster UI (run metadata): markdown tables per unit and window."""

from __future__ import annotations

from typing import Any

from assets.cohort_stats.dialysis import MODALITIES


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def dialysis_markdown(unit: str, window_label: str, values: dict[str, Any]) -> str:
    payload = values.get("payload")
    if not payload:
        return f"**{unit} {window_label}**: empty cohort"
    rows = [[m, payload["all"][m], payload["incident"][m], payload["prevalent"][m]] for m in MODALITIES]
    rows.append(["**Total**", sum(payload["all"].values()), sum(payload["incident"].values()),
                 sum(payload["prevalent"].values())])
    freq = payload["incentre_dialysis_frequency"]
    edges = freq["bin_edges"]
    frows = [[f"{edges[i]:g}–{edges[i + 1]:g}" + (" (and above)" if i == 13 else ""), n]
             for i, n in enumerate(freq["counts"])]
    return (f"**{unit} {window_label}** ({payload['from_time'][:10]} → {payload['to_time'][:10]}, "
            f"population {payload['population']})\n\n"
            + md_table(["modality", "all", "incident", "prevalent"], rows)
            + "\n\nIn-centre HD sessions per week (prevalent patients)\n\n"
            + md_table(["sessions/week", "patients"], frows))


def demographics_markdown(unit: str, window_label: str, values: dict[str, Any]) -> str:
    payload = values.get("payload")
    if not payload:
        return f"**{unit} {window_label}**: empty cohort"
    ages = {k: v for k, v in payload["age"].items() if k != "Unknown"}
    bands: dict[str, int] = {}
    for age, n in ages.items():
        band = f"{int(age) // 10 * 10}–{int(age) // 10 * 10 + 9}"
        bands[band] = bands.get(band, 0) + n
    bands["Unknown"] = payload["age"].get("Unknown", 0)
    return (f"**{unit} {window_label}** (on {payload['on_date']}, population {payload['population']})\n\n"
            + md_table(["gender", "patients"], [[k, v] for k, v in payload["gender"].items()]) + "\n\n"
            + md_table(["ethnic group", "patients"], [[k, v] for k, v in payload["ethnic_group"].items()]) + "\n\n"
            + md_table(["age band", "patients"], [[k, v] for k, v in bands.items()]))


MARKDOWN = {"dialysis": dialysis_markdown, "demographics": demographics_markdown}
