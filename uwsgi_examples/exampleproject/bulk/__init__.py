"""A generated app that stands in for a substantial code base (see ``settings_large``)."""

from __future__ import annotations

import os

#: How many models (each with an admin class and two views) the app generates.
COUNT = int(os.environ.get("EXAMPLE_BULK_MODELS", "300"))
