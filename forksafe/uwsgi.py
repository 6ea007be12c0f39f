"""uWSGI integration: reset inherited connections after every uWSGI fork.

uWSGI forks its workers, mules and spoolers in C, so the hooks that
:func:`forksafe.install` registers with :func:`os.register_at_fork` do not run
there (unless ``py-call-osafterfork`` is on). uWSGI calls one Python function
instead, ``uwsgi.post_fork_hook``, in every process it forks: workers (also
when respawned after ``max-requests``, ``harakiri`` or a reload), mules and
spoolers. The ``uwsgidecorators`` module shipped with the ``uwsgi`` package
takes that attribute over with a chain (``postfork_chain``) that its
``@postfork``, ``@mule`` and ``@muleloop`` decorators append to.

:func:`install` puts :func:`forksafe.after_fork_in_child` at the *front* of that
chain, so it runs before any other post-fork code of the application (a
``@mule`` function may never return, and a ``@postfork`` hook may query the
database: both must find the connections already detached). A function a user
assigned to ``uwsgi.post_fork_hook`` by hand before this is kept, in the chain
after ours. Assigning ``uwsgi.post_fork_hook`` *after* this replaces the chain,
ours included: register hooks with ``@uwsgidecorators.postfork`` instead.

``forksafe.install()`` calls :func:`install` by itself when it runs inside
uWSGI. With ``py-call-osafterfork`` on, both the at-fork hook and this one run
in each child; the second finds nothing left to do. With ``lazy-apps`` the
application (and forksafe) loads after the fork: nothing is inherited, and the
hook only matters for processes forked later. Outside uWSGI importing this
module works and :func:`install` does nothing but log why.

uWSGI's ``uwsgidecorators`` refuses to load without the ``master`` process;
then :func:`install` logs a warning saying what ``master`` adds. Workers are
still safe: each connection checks before its first use in a worker that the
worker opened it (``forksafe._guard``), and a worker's inherited connections
are detached then, with one WARNING per worker. What that cannot give: the
reset before your own post-fork code runs, mules and spoolers.
"""

from __future__ import annotations

import logging
from typing import Any

from forksafe import _fork
from forksafe._fork import after_fork_in_child
from forksafe._uwsgi_facts import (
    ServerFacts,
    configured_facts,
    facts_from_options,
    running_under_uwsgi,
    server_facts,
)

logger = logging.getLogger("forksafe")

__all__ = [
    "ServerFacts",
    "configured_facts",
    "facts_from_options",
    "install",
    "install_if_under_uwsgi",
    "running_under_uwsgi",
    "server_facts",
]

_installed = False


def _post_fork() -> None:
    """Runs first in every process that uWSGI forks (worker, mule, spooler)."""
    after_fork_in_child()  # never raises; a no-op where nothing was inherited


def install() -> bool:
    """Run :func:`forksafe.after_fork_in_child` after every fork uWSGI makes.

    Call it in the process that loads the application (uWSGI's master, or each
    worker with ``lazy-apps``), before anything forks; ``forksafe.install()``
    does. The hook itself runs later, in each child uWSGI forks, before the
    child serves a request or runs a mule function. Idempotent.

    Returns ``True`` when the hook is in uWSGI's post-fork chain, ``False``
    when it could not be put there: outside uWSGI (logged at INFO: nothing
    forks in C there, ``forksafe.install()``'s at-fork hooks cover
    ``os.fork()``), or without uWSGI's ``master`` process (logged as a
    WARNING with what to do).
    """
    global _installed
    if _installed:
        return True
    if not running_under_uwsgi():
        logger.info(
            "forksafe.uwsgi: not running under uWSGI (there is no uwsgi module); nothing to"
            " install. os.fork() is covered by forksafe.install()'s at-fork hooks."
        )
        return False
    _fork.add_bypass_explainer(_explain_bypass)
    facts = server_facts()
    if facts is not None and not facts.master:
        logger.warning(
            "forksafe.uwsgi: uWSGI runs without its master process, so its post-fork hook"
            " chain (uwsgidecorators) is not available: forksafe cannot reset a worker"
            " when it is forked, only when it first uses a connection inherited from the"
            " process that loaded the application (a WARNING in each worker). Enable"
            " `master = true` for the reset before any of your code (@postfork hooks,"
            " mules, spoolers), or call forksafe.after_fork_in_child() at the start of"
            " your own uwsgi.post_fork_hook."
        )
        return False
    import uwsgi

    previous: Any = getattr(uwsgi, "post_fork_hook", None)
    # Its first import replaces uwsgi.post_fork_hook with the chain.
    import uwsgidecorators

    chain: list[Any] = uwsgidecorators.postfork_chain
    chain_hook = uwsgidecorators.postfork_chain_hook
    if previous is not None and previous is not chain_hook and previous not in chain:
        # Set by hand before (or instead of) uwsgidecorators: keep it, after ours.
        chain.append(previous)
    uwsgi.post_fork_hook = chain_hook
    if _post_fork not in chain:
        chain.insert(0, _post_fork)
    _installed = True
    logger.debug("forksafe.uwsgi: post-fork detach installed in uWSGI's post-fork chain")
    return True


def _explain_bypass() -> str | None:
    """Which uWSGI path forked a process without forksafe's reset (for the WARNING)."""
    facts = server_facts()
    if facts is None:
        return None
    if not facts.master:
        return (
            "uWSGI forked this worker in C, and without `master` its post-fork hook chain"
            " (uwsgidecorators) cannot run forksafe's reset. Set `master = true`: the reset"
            " then runs in every worker, mule and spooler before any of your code, your"
            " @postfork hooks included"
        )
    return (
        "uWSGI forked this process without running forksafe's post-fork hook: something"
        " assigned uwsgi.post_fork_hook after forksafe.install(). Register post-fork code"
        " with @uwsgidecorators.postfork instead"
    )


def install_if_under_uwsgi() -> None:
    """Call :func:`install` inside uWSGI; do nothing, silently, elsewhere.

    What ``forksafe.install()`` calls.
    """
    if running_under_uwsgi():
        install()
