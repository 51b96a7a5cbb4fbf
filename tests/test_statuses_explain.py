"""`pso explain` (issue 3, deliverable 5): how L was chosen, and a clear error for an unknown patient."""

from __future__ import annotations

import pytest

from assets.statuses import explain_statuses, format_explanation
from assets.statuses.explain import CONSENTS
from test_statuses_helpers import TODAY, World


def test_explain_numbers_respondents_and_shows_which_consents_are_in_l(engine):
    with engine.begin() as conn:
        w = World(conn)
        p = w.patient()
        w.patient_session(p)
        # Two parent rows of the same name merge into one respondent; a third parent is another.
        first = w.consent(p, "hpv", "refused", parent_id=w.parent("Same Name"), submitted=0)
        newer = w.consent(p, "hpv", "given", parent_id=w.parent("Same Name"), submitted=1)
        other = w.consent(p, "hpv", "given", parent_id=w.parent("Other Parent"), submitted=0)
    with engine.connect() as conn:
        explanation = explain_statuses(conn, p, "hpv", TODAY)
    rows = explanation["inputs"][CONSENTS]
    by_id = {r["consent_id"]: r for r in rows}
    assert by_id[first]["respondent"] == by_id[newer]["respondent"] != by_id[other]["respondent"]
    assert {r["consent_id"] for r in rows if r["why"].startswith("counts")} == {newer, other}
    assert by_id[first]["why"] == "does not count: a later answer of the same respondent replaces it"
    text = format_explanation(explanation)
    assert "Same Name" not in text and "Other Parent" not in text and "Testy" not in text


def test_explain_of_an_unknown_patient_is_an_error(engine, database_url):  # database_url: the CLI reads it
    with engine.begin() as conn:
        World(conn)
    with engine.connect() as conn:
        with pytest.raises(ValueError, match="no patient with id 987654"):
            explain_statuses(conn, 987654, "hpv", TODAY)
    from orchestration.cli import main

    assert main(["explain", "987654", "hpv", "--today", TODAY.isoformat()]) == 2
