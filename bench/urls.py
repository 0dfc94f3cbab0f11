"""The project's URLs plus the bench floors (bench/floor.py)."""

from __future__ import annotations

from django.urls import path

from bench.floor import FloorApiView, FloorKeyListView, floor_plain, floor_site, floor_submit
from edpotential.urls import urlpatterns as project_urlpatterns

urlpatterns = [
    path("bench/floor/<str:token>/", floor_submit, name="bench_floor_submit"),
    path("bench/floor/plain/<slug:slug>/key", floor_plain, name="bench_floor_plain"),
    path("bench/admin/", floor_site.urls),
    path("bench/floor/api/<slug:slug>/key", FloorApiView.as_view(), name="bench_floor_api_key"),
    path("bench/floor/api/keys/", FloorKeyListView.as_view(), name="bench_floor_api_keys"),
    *project_urlpatterns,
]
