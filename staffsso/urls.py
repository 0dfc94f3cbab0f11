from __future__ import annotations

from django.urls import path

from staffsso import views

app_name = "staffsso"
urlpatterns = [
    path("login/", views.SsoLoginView.as_view(), name="login"),
    path("reauth/", views.SsoReauthView.as_view(), name="reauth"),
    path("callback/", views.callback, name="callback"),
    path("code/", views.code_view, name="code"),
]
