"""A small runnable Django project served by uWSGI and gunicorn (see README.md)."""

from __future__ import annotations
