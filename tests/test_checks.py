"""System checks: each fires on what it is about and stays quiet otherwise."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
from django.core.checks import CheckMessage
from django.test import override_settings

from forksafe import checks, conf
from forksafe._uwsgi_facts import configured_facts, facts_from_options

pytestmark = pytest.mark.nodb


def _ids(messages: list[CheckMessage]) -> list[str]:
    return [str(m.id) for m in messages]


def test_valid_settings_are_quiet() -> None:
    with override_settings(FORKSAFE={"INSTALL": True, "THREADS": False}):
        assert _ids(checks.forksafe_checks()) == []
    assert _ids(checks.forksafe_checks()) == []


def test_unknown_key_is_an_error_naming_the_key_and_the_valid_ones() -> None:
    with override_settings(FORKSAFE={"TREADS": True}):
        messages = checks.forksafe_checks()
    assert _ids(messages) == ["forksafe.E001"]
    assert "'TREADS'" in messages[0].msg
    assert "CLOSE_BEFORE_FORK, FREEZE_GC, INSTALL, THREADS" in str(messages[0].hint)


def test_forksafe_setting_that_is_not_a_dict_is_an_error() -> None:
    with override_settings(FORKSAFE=["THREADS"]):
        messages = checks.forksafe_checks()
    assert _ids(messages) == ["forksafe.E001"]
    assert "must be a dict" in messages[0].msg


def test_wrong_value_type_is_an_error_and_falls_back_to_the_default() -> None:
    with override_settings(FORKSAFE={"CLOSE_BEFORE_FORK": "no"}):
        messages = checks.forksafe_checks()
        assert conf.get("CLOSE_BEFORE_FORK") is False
    assert _ids(messages) == ["forksafe.E002"]
    assert "'no'" in messages[0].msg


def test_settings_are_read_at_access_time() -> None:
    assert conf.get("THREADS") is False
    with override_settings(FORKSAFE={"THREADS": True}):
        assert conf.get("THREADS") is True
    assert conf.get("THREADS") is False


def _checks_in_fresh_process(install: bool) -> list[str]:
    """Run the checks in a new interpreter with a pooled database configured."""
    code = textwrap.dedent(
        f"""
        import django
        from django.conf import settings
        settings.configure(
            DATABASES={{"default": {{"ENGINE": "django.db.backends.postgresql", "NAME": "x",
                                    "OPTIONS": {{"pool": True}}}}}},
            INSTALLED_APPS=[],
        )
        if {install!r}:
            import forksafe
            forksafe.install()
        django.setup()
        from forksafe import checks
        print(",".join(str(m.id) for m in checks.forksafe_checks()))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return [i for i in out.strip().split(",") if i]


def test_native_pool_without_fork_hooks_warns() -> None:
    assert _checks_in_fresh_process(install=False) == ["forksafe.W001"]


def test_native_pool_with_fork_hooks_is_quiet() -> None:
    assert _checks_in_fresh_process(install=True) == []


@pytest.mark.parametrize(
    ("opt", "setting", "expected"),
    [
        # uwsgi.opt as uWSGI fills it: flags are True, values are bytes.
        ({"master": True, "workers": b"4", "enable-threads": True}, {}, []),
        ({"workers": b"4", "enable-threads": True}, {}, ["forksafe.W002"]),
        ({"master": True}, {"THREADS": True}, ["forksafe.W003"]),
        ({"master": True, "enable-threads": True}, {"THREADS": True}, []),
        ({"master": True, "threads": b"4"}, {"THREADS": True}, []),
        ({"master": b"false"}, {"THREADS": True}, ["forksafe.W002", "forksafe.W003"]),
    ],
)
@pytest.mark.parametrize("version", [None, (2, 0, 26)])
def test_uwsgi_checks_before_2_0_27(
    opt: dict[str, Any],
    setting: dict[str, Any],
    expected: list[str],
    version: tuple[int, ...] | None,
) -> None:
    """uWSGI before 2.0.27 (or of unknown version) runs threads only when told to."""
    with override_settings(FORKSAFE=setting):
        assert _ids(checks.uwsgi_messages(facts_from_options(opt, version=version))) == expected


def test_uwsgi_facts_come_from_the_uwsgi_environment_variables_outside_the_server() -> None:
    assert configured_facts({"PATH": "/bin"}) is None
    facts = configured_facts(
        {"UWSGI_MASTER": "1", "UWSGI_WORKERS": "4", "UWSGI_ENABLE_THREADS": "true"}
    )
    assert facts is not None
    assert (facts.master, facts.python_threads, facts.lazy_apps) == (True, True, False)
    assert (facts.processes, facts.threads) == (4, None)
    assert facts.source == "environment (UWSGI_ENABLE_THREADS, UWSGI_MASTER, UWSGI_WORKERS)"


@pytest.mark.parametrize("version", [(2, 0, 27), (2, 0, 31), (2, 1, 0)])
def test_uwsgi_2_0_27_and_later_always_run_threads_so_no_w003(version: tuple[int, ...]) -> None:
    with override_settings(FORKSAFE={"THREADS": True}):
        assert (
            _ids(checks.uwsgi_messages(facts_from_options({"master": True}, version=version))) == []
        )
        assert _ids(checks.uwsgi_messages(facts_from_options({}, version=version))) == [
            "forksafe.W002"
        ]


def test_uwsgi_checks_are_quiet_outside_uwsgi() -> None:
    assert checks.uwsgi_messages(None) == []
    assert checks.log_server_warnings() == []


def _ready_in_fresh_process(forksafe_setting: dict[str, Any], before: str = "") -> str:
    code = textwrap.dedent(
        f"""
        import django
        from django.conf import settings
        settings.configure(INSTALLED_APPS=["forksafe"], FORKSAFE={forksafe_setting!r})
        {before}
        django.setup()
        from forksafe import _fork, _thread_guard
        print(_fork._hooks_registered, _fork._options.close_before_fork, _thread_guard.enabled())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_app_ready_installs_the_hooks_with_the_settings() -> None:
    assert _ready_in_fresh_process({}) == "True None False"
    setting = {"CLOSE_BEFORE_FORK": True, "THREADS": True}
    assert _ready_in_fresh_process(setting) == "True True True"


def test_app_ready_installs_nothing_when_told_not_to() -> None:
    assert _ready_in_fresh_process({"INSTALL": False}) == "False None False"


def test_app_ready_survives_invalid_settings_and_leaves_them_to_the_checks() -> None:
    assert _ready_in_fresh_process({"THREADS": "yes", "TYPO": 1}) == "True None False"


def test_app_ready_keeps_the_options_of_an_earlier_install_call() -> None:
    before = "import forksafe; forksafe.install(close_before_fork=False, threads=True)"
    assert _ready_in_fresh_process({}, before) == "True False True"
    # A setting the user wrote wins over the earlier call.
    assert _ready_in_fresh_process({"THREADS": False}, before) == "True False False"


def test_app_ready_sets_freeze_gc_from_the_setting() -> None:
    code = textwrap.dedent(
        """
        import django
        from django.conf import settings
        settings.configure(INSTALLED_APPS=["forksafe"], FORKSAFE={"FREEZE_GC": True})
        django.setup()
        from forksafe import _fork
        print(_fork._options.freeze_gc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
