"""What a missing server or tool means: a skip on a developer machine, a failure in CI.

CI sets ``CI`` (GitHub Actions and most others: ``true``; some: ``1``); any
non-empty value counts, so CI never goes green without having run these tests.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when the environment variable ``CI`` is set to anything non-empty."""
    return bool(os.environ.get("CI"))


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason``; fail it instead under CI."""
    if in_ci():
        pytest.fail(f"CI={os.environ['CI']}: {reason}")
    pytest.skip(reason)
