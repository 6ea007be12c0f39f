"""``forksafe.install()`` wherever the README says it may be called, in fresh interpreters.

The README places it at the top of ``manage.py``, ``wsgi.py``, ``asgi.py`` or the settings
module: before ``DJANGO_SETTINGS_MODULE`` is set (Django's ``manage.py`` sets it inside
``main()``), before ``settings.configure()``. There it must read no setting and evaluate no
lazy object. ``tests/test_user_path.py`` runs the same placements on a generated project.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.harness.scripts import ROOT, run_python

SETTINGS_FREE_ENV = {"DJANGO_SETTINGS_MODULE": ""}


@pytest.mark.nodb
def test_install_reads_no_setting_and_evaluates_no_lazy_object() -> None:
    script = (
        "import json, os\n"
        "os.environ.pop('DJANGO_SETTINGS_MODULE', None)\n"
        "from django.utils.functional import SimpleLazyObject\n"
        "evaluated = []\n"
        "lazy = SimpleLazyObject(lambda: evaluated.append('lazy') or 'value')\n"
        "import forksafe\n"
        "forksafe.install()\n"
        "from django.conf import settings\n"
        "print(json.dumps({'evaluated': evaluated, 'configured': settings.configured}))\n"
    )
    assert run_python("-c", script, env=SETTINGS_FREE_ENV) == {
        "evaluated": [],
        "configured": False,
    }


@pytest.mark.nodb
def test_install_before_settings_configure_leaves_the_settings_to_the_user() -> None:
    script = (
        "import json, os\n"
        "os.environ.pop('DJANGO_SETTINGS_MODULE', None)\n"
        "import forksafe\n"
        "forksafe.install()\n"
        "from django.conf import settings\n"
        "settings.configure(DATABASES={'default': {'ENGINE': 'django.db.backends.sqlite3',"
        " 'NAME': ':memory:'}})\n"
        "import django\n"
        "django.setup()\n"
        "from django.db import connection\n"
        "connection.ensure_connection()\n"
        "print(json.dumps(forksafe.stats()['default']['open']))\n"
    )
    assert run_python("-c", script, env=SETTINGS_FREE_ENV) == 1


@pytest.mark.nodb
def test_install_at_start_up_does_not_scan_the_heap() -> None:
    """No backend loaded yet, so no wrapper can exist: ``gc.get_objects`` is never called."""
    script = (
        "import gc, json, os\n"
        "os.environ.pop('DJANGO_SETTINGS_MODULE', None)\n"
        "calls = []\n"
        "real = gc.get_objects\n"
        "gc.get_objects = lambda *a, **k: calls.append(1) or real(*a, **k)\n"
        "import forksafe\n"
        "forksafe.install()\n"
        "print(json.dumps(len(calls)))\n"
    )
    assert run_python("-c", script, env=SETTINGS_FREE_ENV) == 0


def test_a_connection_opened_before_install_in_another_thread_is_detached_in_a_child() -> None:
    """Late install: the thread's connection, idle at the fork, is found and detached there.

    The thread keeps its wrapper alive (it waits) and never uses it after ``install()``,
    so only the scan at ``install()`` can find it; the child reports the detach count.
    """
    script = (
        "import importlib, json, os, threading, django\n"
        "from django.conf import settings\n"
        "test_settings = importlib.import_module(os.environ['DJANGO_SETTINGS_MODULE'])\n"
        "os.environ.pop('DJANGO_SETTINGS_MODULE')\n"
        "settings.configure(DATABASES=test_settings.DATABASES)  # no 'forksafe' app\n"
        "django.setup()\n"
        "from django.db import connections\n"
        "opened, stop = threading.Event(), threading.Event()\n"
        "def body():\n"
        "    connections['default'].ensure_connection()\n"
        "    opened.set()\n"
        "    stop.wait(60)\n"
        "    connections['default'].close()\n"
        "t = threading.Thread(target=body)\n"
        "t.start()\n"
        "assert opened.wait(30)\n"
        "import forksafe\n"
        "forksafe.install()\n"
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.close(r)\n"
        "    stats = forksafe.stats().get('default', {})\n"
        "    os.write(w, json.dumps(stats.get('detached', 0)).encode())\n"
        "    os._exit(0)\n"
        "os.close(w)\n"
        "with os.fdopen(r) as reader:\n"
        "    detached = json.loads(reader.read())\n"
        "_, status = os.waitpid(pid, 0)\n"
        "assert os.waitstatus_to_exitcode(status) == 0, status\n"
        "stop.set()\n"
        "t.join(30)\n"
        "print(json.dumps(detached))\n"
    )
    assert run_python("-c", script) == 1


@pytest.mark.nodb
def test_importing_forksafe_without_django_names_django() -> None:
    """Django is the one required dependency: Python's own ImportError says which."""
    code = (
        f"import sys; sys.path[:] = [{str(ROOT)!r}]"
        " + [p for p in sys.path if 'site-packages' not in p]; import forksafe"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode != 0
    assert "No module named 'django'" in proc.stderr, proc.stderr[-2000:]
