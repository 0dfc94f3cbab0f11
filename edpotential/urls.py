from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.i18n import set_language

from credentials.views import healthz, metrics
from edpotential.security import permission_denied, server_error

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("api.urls")),
    # Staff sign-in with the identity provider (answers 404 without OIDC_ISSUER).
    path("sso/", include("staffsso.urls")),
    # For monitors: ok/failing per component, 200 or 503 (credentials.services.health).
    path("healthz", healthz, name="healthz"),
    # For Prometheus, with the bearer token METRICS_TOKEN (credentials.services.metrics).
    path("metrics", metrics, name="metrics"),
    # The customer pages' language switcher (Django's set_language: a POST that sets the language cookie).
    # Without a CSRF token: a forged POST can only change a reader's language, and a token would make
    # the link pages differ per request (an unknown and a used link must answer the same bytes).
    path("i18n/setlang/", csrf_exempt(set_language), name="set_language"),
    # The customer pages: /k/<token>/ (submission links) and /link/ (lost the link?).
    path("", include("credentials.urls")),
]

# A database that went away answers 503 with Retry-After wherever it was noticed (edpotential.security).
handler500 = server_error
# A refusal says which permission is missing and who has it (admin and customer pages alike).
handler403 = permission_denied
