"""An admin class for every generated model (loaded by the admin's autodiscovery)."""

from __future__ import annotations

from django.contrib import admin
from exampleproject.bulk.models import MODELS

for _model in MODELS:
    admin.site.register(
        _model,
        type(
            f"{_model.__name__}Admin",
            (admin.ModelAdmin,),
            {
                "list_display": ("name", "slug", "amount", "quantity", "active", "created"),
                "list_filter": ("active", "created"),
                "search_fields": ("name", "slug", "description"),
                "prepopulated_fields": {"slug": ("name",)},
                "date_hierarchy": "created",
            },
        ),
    )
