"""A list and a detail view (with their URL patterns) for every generated model."""

from __future__ import annotations

from django.urls import URLPattern, path
from django.views.generic import DetailView, ListView
from exampleproject.bulk.models import MODELS

__all__ = ["urlpatterns"]

urlpatterns: list[URLPattern] = []
for _model in MODELS:
    _name = _model.__name__.lower()
    _list = type(f"{_model.__name__}List", (ListView,), {"model": _model, "paginate_by": 50})
    _detail = type(f"{_model.__name__}Detail", (DetailView,), {"model": _model})
    urlpatterns += [
        path(f"{_name}/", _list.as_view(), name=f"{_name}-list"),
        path(f"{_name}/<slug:slug>/", _detail.as_view(), name=f"{_name}-detail"),
    ]
