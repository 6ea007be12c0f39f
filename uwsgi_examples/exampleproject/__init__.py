"""The example Django project: one view that runs ORM queries and says which session it used."""

from __future__ import annotations
