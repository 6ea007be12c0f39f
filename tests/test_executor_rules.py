"""forksafe.ThreadPoolExecutor applies Django's rules once per task, as cheaply as it can.

The shortcut (Django's ``close_if_unusable_or_obsolete()`` called only when one of its
conditions holds) must never skip a backend that overrides the method.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connections

import forksafe


@pytest.mark.parametrize("conn_max_age", [None], indirect=True)
@pytest.mark.usefixtures("conn_max_age")
def test_executor_calls_a_backends_own_rule_after_every_task(db: None) -> None:
    """``CONN_MAX_AGE=None``: Django's own rule would have nothing to do here."""
    calls: list[int] = []

    def own_rule(self: object) -> None:
        calls.append(threading.get_ident())

    def task() -> int:
        wrapper = connections["default"]
        wrapper.ensure_connection()
        if "close_if_unusable_or_obsolete" not in vars(type(wrapper)):
            # As a third-party backend would: a subclass with a rule of its own.
            attrs = {"close_if_unusable_or_obsolete": own_rule}
            wrapper.__class__ = type("OwnRule", (type(wrapper),), attrs)
        return threading.get_ident()

    with forksafe.ThreadPoolExecutor(1) as executor:
        idents = [executor.submit(task).result() for _ in range(3)]
    assert calls == idents
