"""URLs of the large example: the example's own, the admin, and every generated view."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from exampleproject.bulk.views import urlpatterns as bulk_urlpatterns
from exampleproject.urls import urlpatterns as example_urlpatterns

urlpatterns = [
    *example_urlpatterns,
    path("admin/", admin.site.urls),
    path("bulk/", include(bulk_urlpatterns)),
]
