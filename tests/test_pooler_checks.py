"""System checks for a connection pooler, from settings alone (forksafe.E004, W006-W009)."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.core.checks import CheckMessage
from django.test import override_settings

from forksafe import checks
from forksafe.checks import pooler_settings_messages

pytestmark = pytest.mark.nodb

PG = {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "pgb", "PORT": "5432"}
SAFE = {**PG, "DISABLE_SERVER_SIDE_CURSORS": True}


def _messages(databases: dict[str, Any], pooler: Any = None) -> list[CheckMessage]:
    messages: list[CheckMessage] = pooler_settings_messages(databases, pooler)
    return messages


def _ids(messages: list[CheckMessage]) -> list[str]:
    return [str(m.id) for m in messages]


def test_transaction_pooling_with_safe_settings_is_quiet() -> None:
    assert _ids(_messages({"default": SAFE}, "transaction")) == []
    assert _ids(_messages({"default": SAFE}, {"default": "transaction"})) == []
    # Session pooling keeps a server session per client: server-side cursors are fine.
    assert _ids(_messages({"default": PG}, "session")) == []
    assert _ids(_messages({"default": PG})) == []


def test_server_side_cursors_under_transaction_pooling_warn_with_the_fix() -> None:
    (message,) = _messages({"default": PG}, "transaction")
    assert message.id == "forksafe.W006"
    assert "iterator()" in message.msg
    assert message.hint == "Set DATABASES['default'][\"DISABLE_SERVER_SIDE_CURSORS\"] = True."


def test_psycopg_prepared_statements_under_transaction_pooling_warn() -> None:
    db = {**SAFE, "OPTIONS": {"prepare_threshold": 5, "server_side_binding": True}}
    (message,) = _messages({"default": db}, {"default": "statement"})
    assert message.id == "forksafe.W007"
    assert "prepare_threshold" in message.msg and "Remove" in str(message.hint)
    # Django's own default (None) is what transaction pooling needs; its default
    # client-side binding never prepares (both measured in test_pgbouncer.py).
    db = {**SAFE, "OPTIONS": {"prepare_threshold": None, "server_side_binding": True}}
    assert _ids(_messages({"default": db}, "transaction")) == []
    db = {**SAFE, "OPTIONS": {"prepare_threshold": 5}}
    assert _ids(_messages({"default": db}, "transaction")) == []


def test_session_state_set_at_connect_under_transaction_pooling_warns() -> None:
    db = {**SAFE, "OPTIONS": {"assume_role": "app_owner", "options": "-c search_path=app"}}
    (message,) = _messages({"default": db}, "transaction")
    assert message.id == "forksafe.W008"
    assert "assume_role" in message.msg and "search_path" in message.msg
    assert "ALTER ROLE" in str(message.hint)


def test_only_the_aliases_declared_as_pooled_are_checked() -> None:
    databases = {"default": SAFE, "direct": {**PG, "HOST": "db"}}
    assert _ids(_messages(databases, {"default": "transaction", "direct": None})) == []
    assert _ids(_messages(databases, "transaction")) == ["forksafe.W006"]  # every PG alias


def test_port_6432_without_a_declaration_asks_for_one() -> None:
    (message,) = _messages({"default": {**PG, "PORT": 6432}})
    assert message.id == "forksafe.W009"
    assert "FORKSAFE['POOLER'] = {'default': 'transaction'}" in str(message.hint)
    assert _ids(_messages({"default": {**PG, "PORT": 6432}}, {"default": None})) == []
    assert _ids(_messages({"default": {**PG, "PORT": 6432}}, {"default": "session"})) == []


@pytest.mark.parametrize(
    ("pooler", "says"),
    [
        ("transactions", "must be one of 'session', 'transaction', 'statement' or a dict"),
        (True, "not bool"),
        ({"replica": "session"}, "names 'replica', which is not in DATABASES (default)"),
        ({"default": "pooled"}, "gives 'default' the pool mode 'pooled'"),
    ],
)
def test_bad_pooler_declaration_is_one_error(pooler: Any, says: str) -> None:
    (message,) = _messages({"default": SAFE}, pooler)
    assert message.id == "forksafe.E004"
    assert says in message.msg
    assert "FORKSAFE['POOLER'] = 'transaction'" in str(message.hint)


def test_the_checks_read_forksafe_pooler_from_the_settings() -> None:
    """Through Django's check framework, with this run's DATABASES."""
    postgres = [a for a, db in settings.DATABASES.items() if db["ENGINE"].endswith("postgresql")]
    with override_settings(FORKSAFE={"POOLER": "transaction"}):
        found = [m for m in checks.forksafe_checks() if m.id == "forksafe.W006"]
    assert [m.msg.split("]")[0] for m in found] == [f"DATABASES[{a!r}" for a in postgres]
    with override_settings(FORKSAFE={"POOLER": "transactions"}):
        assert "forksafe.E004" in _ids(checks.forksafe_checks())
    pooler_ids = {"forksafe.E004", "forksafe.W006", "forksafe.W007", "forksafe.W008"}
    assert not pooler_ids & set(_ids(checks.forksafe_checks()))  # nothing declared: quiet
