"""The test-suite's machinery: one module per concern, imported by the tests and benchmarks.

Importable as ``tests.harness`` from a checkout (the benchmarks and the example
project's runner, ``uwsgi_examples/run.py``, use it from there); not in the wheel.
Fixtures shared by several test modules live in ``tests/conftest.py``; no test
module imports from another.

- ``processes``: :class:`~tests.harness.processes.ManagedProcess`, the one
  start / wait-until-ready / stop-with-a-deadline / log base of every server and
  worker the tests start (the example servers of ``uwsgi_examples/run.py``,
  PgBouncer, Celery and RQ workers); ``free_port``.
- ``prefork``: set-up shared by the uWSGI, gunicorn and ASGI server tests.
- ``pgbouncer``: a real PgBouncer on a loopback port.
- ``queues``: real Celery and RQ workers, Redis.
- ``sessions``: waiting on the server's session counters (abandoned sessions,
  sessions gone); the questions themselves are ``forksafe._sessions`` (the demo,
  ``doctor`` and ``forksafe.testing`` ask them too).
- ``forking``: run a function in a forked child, with deadlines.
- ``scripts``: run Python in a fresh interpreter from the checkout (``ROOT``).
- ``demo``: run ``forksafe demo``, read its tables.
- ``ci``: a missing server or tool skips the test, or fails it under ``CI``.
- ``programs``: scripts that tests run in fresh interpreters (``python -m
  tests.harness.programs.NAME``).
"""
