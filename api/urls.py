from __future__ import annotations

from django.urls import path

from api import views

app_name = "api"

urlpatterns = [
    path("keys/", views.KeyListView.as_view(), name="keys"),
    path("institutions/<slug:slug>/key", views.KeyReadView.as_view(), name="key"),
    path("institutions/<slug:slug>/syncs", views.SyncReportView.as_view(), name="syncs"),
    path("schema/", views.SchemaView.as_view(), name="schema"),
    # The schema read as a page (Swagger UI from our own static files: no CDN).
    path("docs/", views.ApiDocsView.as_view(), name="docs"),
]
