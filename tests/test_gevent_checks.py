"""System checks W020-W023: what cannot work under gevent (issue 21).

The messages are computed from :class:`forksafe.checks.GreenFacts`, so each check is
tested in-process; the facts of a real patched process are read in a subprocess (a
monkey-patched test process would change every other test).
"""

from __future__ import annotations

from typing import Any

import pytest

from forksafe.checks import GreenFacts, gevent_messages, green_facts
from tests.harness.scripts import run_python


def _ids(facts: GreenFacts, persistent: dict[str, Any] | None = None) -> list[str]:
    return [str(m.id) for m in gevent_messages(facts, persistent or {})]


@pytest.mark.nodb
def test_no_gevent_check_fires_in_a_process_gevent_did_not_patch() -> None:
    facts = GreenFacts(
        patched=False,
        connections_green=False,
        psycopg2_aliases=["default"],
        mysqlclient_aliases=["other"],
    )
    assert _ids(facts, {"default": 60}) == []


@pytest.mark.nodb
def test_w020_fires_when_django_connections_are_shared_by_every_greenlet() -> None:
    assert _ids(GreenFacts(patched=True, connections_green=False)) == ["forksafe.W020"]
    assert _ids(GreenFacts(patched=True, connections_green=True)) == []
    assert _ids(GreenFacts(patched=True, connections_green=None)) == []


@pytest.mark.nodb
def test_w021_fires_for_psycopg2_without_psycogreen() -> None:
    facts = GreenFacts(patched=True, psycopg2_aliases=["default"])
    [message] = gevent_messages(facts, {})
    assert message.id == "forksafe.W021" and "'default'" in message.msg
    assert "psycogreen" in str(message.hint)
    green = GreenFacts(patched=True, psycopg2_aliases=["default"], psycopg2_green=True)
    assert _ids(green) == []


@pytest.mark.nodb
def test_w022_fires_for_mysqlclient_under_gevent() -> None:
    facts = GreenFacts(patched=True, mysqlclient_aliases=["default"])
    [message] = gevent_messages(facts, {})
    assert message.id == "forksafe.W022" and "PyMySQL" in str(message.hint)


@pytest.mark.nodb
def test_w023_fires_for_conn_max_age_without_a_pool_under_gevent() -> None:
    [message] = gevent_messages(GreenFacts(patched=True), {"default": 60})
    assert message.id == "forksafe.W023" and "CONN_MAX_AGE=60" in message.msg


def test_the_facts_name_the_driver_of_this_run(driver: str) -> None:
    facts = green_facts()
    assert facts.patched is False
    assert ("default" in facts.psycopg2_aliases) == (driver == "psycopg2")
    assert ("default" in facts.mysqlclient_aliases) == (driver == "mysqlclient")


@pytest.fixture
def gevent_db(db_url: str, driver: str) -> str:
    if driver not in ("psycopg", "psycopg2", "mysqlclient"):
        pytest.skip("runs for psycopg (W020), psycopg2 (W021) and mysqlclient (W022) only")
    pytest.importorskip("gevent")
    return db_url


@pytest.mark.parametrize("mode", ["late", "late-forksafe", "first"])
def test_patching_after_django_is_reported_or_repaired_in_a_real_process(
    gevent_db: str, driver: str, mode: str
) -> None:
    """``late``: W020, and the greenlets really share one wrapper; with forksafe in use
    its plugin re-homes the connections (no W020, a wrapper per greenlet). psycopg2: W021
    unless forksafe (its plugin, or ``forksafe.gevent.patch_all()``) applied psycogreen."""
    out = run_python(
        "tests/harness/programs/gevent_checks.py",
        mode,
        gevent_db,
        unset=("DJANGO_SETTINGS_MODULE",),
        timeout=60,
    )
    assert ("forksafe.W020" in out["ids"]) == (mode == "late"), out
    assert out["shared"] == (mode == "late"), out
    # Re-homing closed the connection the old storage held (nothing would close it later).
    assert out["closed"] == (mode == "late-forksafe"), out
    # forksafe in use applies psycogreen at the patch (gunicorn's gevent worker does not).
    assert ("forksafe.W021" in out["ids"]) == (driver == "psycopg2" and mode == "late"), out
    assert ("forksafe.W022" in out["ids"]) == (driver == "mysqlclient"), out


def test_doctor_says_what_would_not_work_under_gevent_when_gevent_is_installed(
    driver: str,
) -> None:
    """The doctor's process is not patched: its lines name the checks that would fire."""
    pytest.importorskip("gevent")
    from django.conf import settings

    from forksafe import doctor

    db = settings.DATABASES["default"]
    saved = db.get("CONN_MAX_AGE", 0)
    db["CONN_MAX_AGE"] = 60
    try:
        text = "\n".join(f.message for f in doctor._gevent_findings())
    finally:
        db["CONN_MAX_AGE"] = saved
    assert "forksafe.W023" in text
    assert ("forksafe.W022" in text) == (driver == "mysqlclient")
    assert "forksafe.W021" not in text  # psycogreen is installed with forksafe[gevent]
