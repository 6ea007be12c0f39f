"""Django's own test-suite as a compatibility gate (``python -m tests.compat.gate``).

Django's ``tests/runtests.py`` (from the source distribution of the installed
Django) runs its database and thread labels twice with the same settings:
``plain_<server>`` (no forksafe) and ``forksafe_<server>`` (the same settings
plus ``forksafe.install(threads=True)``). Every test that fails only with
forksafe is forksafe's bug.
"""
