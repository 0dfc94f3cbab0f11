from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("api.urls")),
    # The customer pages: /k/<token>/ (submission links) and /link/ (lost the link?).
    path("", include("credentials.urls")),
]
