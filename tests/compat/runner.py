"""A ``DiscoverRunner`` that writes what failed to ``$FORKSAFE_COMPAT_REPORT`` (JSON)."""

from __future__ import annotations

import json
import os
import platform
import re
import unittest
from typing import Any

import django
from django.db import connection
from django.test.runner import DiscoverRunner

REPORT_ENV = "FORKSAFE_COMPAT_REPORT"


def server_version() -> str:
    """The database server of ``default``, e.g. ``postgresql 150020``."""
    attribute = {"postgresql": "pg_version", "mysql": "mysql_server_info"}[connection.vendor]
    return f"{connection.vendor} {getattr(connection, attribute)}"


def comparable_id(test: unittest.TestCase) -> str:
    """``test.id()`` comparable across runs.

    A subtest's id shows its parameters, and the repr of an object parameter has
    its address (``<object object at 0x7f01fa9efe10>``), different in every process.
    """
    return re.sub(r" at 0x[0-9a-fA-F]+>", " at 0x...>", test.id())


def failures_of(result: unittest.TestResult) -> dict[str, str]:
    """Test id -> formatted traceback, for every failure, error and unexpected success."""
    failed = {comparable_id(test): text for test, text in (*result.errors, *result.failures)}
    for test in result.unexpectedSuccesses:
        failed[comparable_id(test)] = "unexpected success"
    return failed


class ReportingRunner(DiscoverRunner):
    """Django's runner; also records the failing test ids for ``tests.compat.gate``."""

    def run_suite(self, suite: unittest.TestSuite, **kwargs: Any) -> unittest.TextTestResult:
        result = super().run_suite(suite, **kwargs)
        path = os.environ.get(REPORT_ENV)
        if path:
            report = {
                "django": django.get_version(),
                "python": platform.python_version(),
                "server": server_version(),
                "tests_run": result.testsRun,
                "skipped": len(result.skipped),
                "failed": failures_of(result),
            }
            with open(path, "w") as file:
                json.dump(report, file, indent=1, sort_keys=True)
        return result
