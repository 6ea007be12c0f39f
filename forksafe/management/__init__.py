"""Django management commands of the forksafe app."""

from __future__ import annotations
