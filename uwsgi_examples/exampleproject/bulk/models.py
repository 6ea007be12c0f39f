"""``COUNT`` generated models with a dozen fields each; unmanaged (no tables needed)."""

from __future__ import annotations

from typing import Any

from django.db import models
from exampleproject.bulk import COUNT

__all__ = ["MODELS"]


def _model(number: int, previous: type[models.Model] | None) -> type[models.Model]:
    attrs: dict[str, Any] = {
        "__module__": __name__,
        "Meta": type("Meta", (), {"managed": False, "ordering": ["-created"]}),
        "name": models.CharField(max_length=100, db_index=True),
        "slug": models.SlugField(unique=True),
        "description": models.TextField(blank=True),
        "amount": models.DecimalField(max_digits=12, decimal_places=2, default=0),
        "quantity": models.IntegerField(default=0),
        "ratio": models.FloatField(null=True),
        "active": models.BooleanField(default=True),
        "created": models.DateTimeField(auto_now_add=True),
        "updated": models.DateTimeField(auto_now=True),
        "email": models.EmailField(blank=True),
        "website": models.URLField(blank=True),
        "__str__": lambda self: str(self.name),
    }
    if previous is not None:
        attrs["parent"] = models.ForeignKey(previous, null=True, on_delete=models.SET_NULL)
    return type(f"Item{number:03d}", (models.Model,), attrs)


def _models() -> list[type[models.Model]]:
    made: list[type[models.Model]] = []
    for number in range(COUNT):
        made.append(_model(number, made[-1] if made else None))
    return made


MODELS = _models()
globals().update({model.__name__: model for model in MODELS})
