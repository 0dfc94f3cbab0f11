from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from credentials.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("api.urls")),
    # Staff sign-in with the identity provider (answers 404 without OIDC_ISSUER).
    path("sso/", include("staffsso.urls")),
    # For monitors: ok/failing per component, 200 or 503 (credentials.services.health).
    path("healthz", healthz, name="healthz"),
    # The customer pages: /k/<token>/ (submission links) and /link/ (lost the link?).
    path("", include("credentials.urls")),
]
