"""Pandas shaping shared by the calculators: aggregate rows (section, label, n) into payload counts."""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd
import sqlalchemy as sa

from orchestration import schema


def aggregate_frame(conn: sa.Connection, statement: sa.TextClause, params: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(conn.execute(statement, params).all(), columns=["section", "label", "n"])


def section_counts(frame: pd.DataFrame, section: str, labels: Iterable[str]) -> dict[str, int]:
    """{label: n} for every label of `section`, 0 where the SQL returned no row."""
    part = frame[frame["section"] == section].set_index("label")["n"]
    return {label: int(part.get(label, 0)) for label in labels}


def empty_cohort(calculator_version: str) -> dict[str, Any]:
    return {"outcome": int(schema.StatsOutcome.EMPTY_COHORT), "payload": None, "population": 0,
            "calculator_version": calculator_version}


def ok(payload: dict[str, Any], calculator_version: str) -> dict[str, Any]:
    return {"outcome": int(schema.StatsOutcome.OK), "payload": payload, "population": payload["population"],
            "calculator_version": calculator_version}
