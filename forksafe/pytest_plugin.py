"""pytest plugin (``pytest11`` entry point ``forksafe``): the ``forksafe_no_leaks`` fixture.

Loaded by pytest in every project where forksafe is installed, so it imports
nothing from Django until the fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

__all__ = ["forksafe_no_leaks"]


@pytest.fixture
def forksafe_no_leaks() -> Iterator[None]:
    """Fail the test if it leaves server sessions or other threads' connections behind.

    See :func:`forksafe.testing.assert_no_connection_leaks`; watches every
    configured database.
    """
    from forksafe.testing import assert_no_connection_leaks

    with assert_no_connection_leaks():
        yield
