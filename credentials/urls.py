from __future__ import annotations

from django.urls import path

from credentials import views

app_name = "credentials"

urlpatterns = [
    # Before "k/<token>/": "received" is never a token (tokens are 43 characters).
    path("k/received/", views.received, name="received"),
    path("k/<str:token>/", views.submit, name="submit"),
    path("link/", views.request_link, name="request_link"),
    path("link/sent/", views.request_link_sent, name="request_link_sent"),
]
