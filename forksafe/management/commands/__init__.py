"""``manage.py forksafe_doctor``."""

from __future__ import annotations
