"""Settings of the *large* example: the example project plus a substantial code base.

Django's admin, auth, contenttypes, sessions and messages with their middleware
and templates, and the ``bulk`` app: a few hundred models, admin classes and
views generated at import (``EXAMPLE_BULK_MODELS``, default 300). The loading
process imports all of it and the URLconf before the server forks, as a
production deployment does, so that the workers share it copy-on-write. Used by
``benchmarks/prefork_bench.py`` (``--app large``); select it with
``DJANGO_SETTINGS_MODULE=exampleproject.settings_large``.
"""

from __future__ import annotations

from exampleproject.settings import *  # noqa: F403
from exampleproject.settings import INSTALLED_APPS

INSTALLED_APPS = [
    "django.contrib.admin",
    *INSTALLED_APPS,
    "django.contrib.sessions",
    "django.contrib.messages",
    "exampleproject.bulk",
]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "exampleproject.urls_large"
# startup.warm_up(): import the URLconf (and every view) in the loading process.
EXAMPLE_WARM_UP = True
