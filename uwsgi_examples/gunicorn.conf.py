"""gunicorn configuration for the example project: ``python run.py gunicorn``.

``preload_app = True`` loads (and queries) in the arbiter, then forks the
workers: forksafe's hooks give each worker a session of its own. ``python run.py
gunicorn-uvicorn`` serves ``exampleproject.asgi`` with uvicorn's worker class instead.
"""

from __future__ import annotations

import os

wsgi_app = "exampleproject.wsgi:application"
bind = f"127.0.0.1:{os.environ.get('EXAMPLE_PORT', '8000')}"
workers = 4
worker_class = os.environ.get("EXAMPLE_WORKER_CLASS", "sync")
threads = int(os.environ.get("EXAMPLE_THREADS", "4" if worker_class == "gthread" else "1"))
preload_app = os.environ.get("EXAMPLE_PRELOAD", "1") == "1"
# EXAMPLE_WORKER_CLASS=gevent: one greenlet per client connection.
worker_connections = 1000
# gunicorn 27+: no control socket in ~/.gunicorn (several examples may run at once).
control_socket_disable = True
timeout = 20
graceful_timeout = 10
max_requests = int(os.environ.get("EXAMPLE_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 5

if os.environ.get("EXAMPLE_FORKSAFE", "1") in ("1", "hook"):
    # Imported only here: EXAMPLE_FORKSAFE=0 is plain Django (the control).
    import forksafe.gunicorn

    # With forksafe.install() in wsgi.py these find nothing left to do; with
    # EXAMPLE_FORKSAFE=hook they are all there is; EXAMPLE_FORKSAFE=wsgi leaves them out
    # (install() in wsgi.py alone).
    pre_fork = forksafe.gunicorn.pre_fork
    post_fork = forksafe.gunicorn.post_fork
    worker_exit = forksafe.gunicorn.worker_exit
