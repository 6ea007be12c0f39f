from __future__ import annotations

from django.db import models


class Item(models.Model):
    """A row the tests write and read through the ORM."""

    name: models.CharField[str, str] = models.CharField(max_length=100)
    pid: models.IntegerField[int, int] = models.IntegerField(default=0)

    class Meta:
        app_label = "testapp"
