"""Errors as RFC 9457 problem details: application/problem+json with type, title, status, detail.

`type` is a URN naming the problem (`urn:cd2-registry:problem:<code>`);
`code` repeats its last part for clients that switch on it.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:cd2-registry:problem:"

logger = logging.getLogger(__name__)

# Seconds a client is asked to wait when the database cannot be reached.
UNAVAILABLE_RETRY_AFTER = 60

# One body for every 401: no hint whether the token was unknown, revoked or expired.
UNAUTHORIZED = {
    "code": "unauthorized",
    "title": "Unauthorized",
    "detail": "A valid API token is required (Authorization: Bearer <token>).",
}


def problem_response(
    *, status_code: int, code: str, title: str, detail: str, headers: dict | None = None, **extra
) -> Response:
    body = {"type": TYPE_PREFIX + code, "title": title, "status": status_code, "detail": detail, "code": code}
    body.update(extra)
    return Response(body, status=status_code, headers=headers, content_type=PROBLEM_CONTENT_TYPE)


def problem_exception_handler(exc, context) -> Response | None:
    """DRF's EXCEPTION_HANDLER for the API views; None (a 500) for anything that is not an API error.

    A database that cannot be reached is a 503 with Retry-After, not a 500:
    the request changed nothing (each write is one transaction) and the
    pipeline may simply try again.
    """
    if isinstance(exc, OperationalError | InterfaceError):
        logger.error("Database unavailable while serving the API", exc_info=exc)
        return problem_response(
            status_code=503,
            code="service_unavailable",
            title="Service Unavailable",
            detail="The registry's database cannot be reached. Nothing was changed; try again shortly.",
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    if exc.status_code == HTTPStatus.UNAUTHORIZED:
        return problem_response(status_code=401, headers=headers, **UNAUTHORIZED)
    title = HTTPStatus(exc.status_code).phrase
    if isinstance(exc.detail, dict | list):
        return problem_response(
            status_code=exc.status_code,
            code="invalid_request",
            title=title,
            detail="The request is not valid; see errors.",
            headers=headers,
            errors=exc.detail,
        )
    code = exc.detail.code if hasattr(exc.detail, "code") else exc.default_code
    return problem_response(
        status_code=exc.status_code, code=str(code), title=title, detail=str(exc.detail), headers=headers
    )
