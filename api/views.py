"""The /api/v1/ endpoints: thin doors into api/services.py."""

from __future__ import annotations

from django.utils.dateparse import parse_datetime
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.exceptions import APIException, NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from api.authentication import AccountRateThrottle, AnonymousRateThrottle, ApiTokenAuthentication, HasScope
from api.models import Scope
from api.problems import problem_exception_handler, problem_response
from api.serializers import (
    KeyListQuerySerializer,
    KeySerializer,
    KeySummarySerializer,
    ProblemSerializer,
    SyncReportInSerializer,
    SyncReportOutSerializer,
)
from api.services import ApiRefused, account_keys, api_key_read, api_sync_report
from requestinfo import client_ip

# What each refusal of the services is, in HTTP.
REFUSALS = {
    "institution_not_found": (404, "Not Found"),
    "key_not_found": (404, "Not Found"),
    "no_key": (404, "Not Found"),
    "key_pending": (409, "Conflict"),
    "key_invalid": (409, "Conflict"),
    "key_lost": (409, "Conflict"),
    "key_expired": (409, "Conflict"),
}


def refusal_response(refusal: ApiRefused):
    status_code, title = REFUSALS[refusal.code]
    return problem_response(status_code=status_code, code=refusal.code, title=title, detail=str(refusal))


class ApiView(APIView):
    """Token auth, one scope per view, the account's rate limit, JSON only, problem details for errors."""

    authentication_classes = (ApiTokenAuthentication,)
    permission_classes = (HasScope,)
    throttle_classes = (AccountRateThrottle, AnonymousRateThrottle)
    renderer_classes = (JSONRenderer,)
    schema = AutoSchema()
    required_scope: str = ""

    def get_exception_handler(self):
        return problem_exception_handler


class InvalidCursor(APIException):
    status_code = 400
    default_code = "invalid_cursor"
    default_detail = "This cursor is not one the list gave out; start again from the first page, without it."


def _is_moment(text: str) -> bool:
    try:
        return parse_datetime(text) is not None
    except ValueError:  # shaped like a moment, out of range (month 13)
        return False


class KeyPagination(CursorPagination):
    # A cursor, not page numbers: an institution that changes while a client
    # pages moves to the end instead of shifting the pages under it.
    ordering = ("updated_at", "pk")
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request):
        """DRF's cursor, refused with a 400 unless it decodes and its position is a moment.

        DRF checks the encoding and the offset but passes the position to
        the query as it is: a made-up position (`p=x`) answered 500.
        """
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise InvalidCursor() from None
        if cursor is not None and cursor.position is not None and not _is_moment(cursor.position):
            raise InvalidCursor()
        return cursor


PROBLEMS = {code: OpenApiResponse(ProblemSerializer) for code in (401, 403, 404, 409, 429)}


class KeyListView(ApiView):
    required_scope = Scope.KEYS_LIST

    @extend_schema(parameters=[KeyListQuerySerializer], responses={200: KeySummarySerializer(many=True), **PROBLEMS})
    def get(self, request):
        query = KeyListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        queryset = account_keys(account=request.user, changed_since=query.validated_data.get("changed_since"))
        paginator = KeyPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(KeySummarySerializer(page, many=True).data)


class KeyReadView(ApiView):
    required_scope = Scope.KEYS_READ

    @extend_schema(responses={200: KeySerializer, **PROBLEMS})
    def get(self, request, slug: str):
        try:
            key = api_key_read(token=request.auth, institution_slug=slug, ip_address=client_ip(request._request))
        except ApiRefused as refusal:
            response = refusal_response(refusal)
        else:
            credential = key.credential
            response = Response(
                KeySerializer(
                    {
                        "client_id": key.client_id,
                        "client_secret": key.secret,
                        "expires_on": credential.expires_on,
                        "region": credential.region,
                        "key_id": credential.pk,
                    }
                ).data
            )
        response["Cache-Control"] = "no-store"
        return response


class SyncReportView(ApiView):
    required_scope = Scope.SYNCS_WRITE

    @extend_schema(request=SyncReportInSerializer, responses={202: SyncReportOutSerializer, **PROBLEMS})
    def post(self, request, slug: str):
        data = SyncReportInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            result = api_sync_report(
                token=request.auth,
                institution_slug=slug,
                ip_address=client_ip(request._request),
                **data.validated_data,
            )
        except ApiRefused as refusal:
            return refusal_response(refusal)
        body = {
            "id": result.report.pk,
            "outcome": result.report.outcome,
            "check_queued": result.report.check_queued,
            "active_key_id": result.active_key_id,
        }
        return Response(SyncReportOutSerializer(body).data, status=202)


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema: public (it holds no data), rate limited per address."""

    authentication_classes = ()
    permission_classes = ()
    throttle_classes = (AnonymousRateThrottle,)

    def get_exception_handler(self):
        return problem_exception_handler


class ApiDocsView(SpectacularSwaggerSplitView):
    """The API's documentation page: Swagger UI on the schema above, public like it.

    Swagger UI's files come from drf-spectacular-sidecar through our static
    files (SWAGGER_UI_DIST = "SIDECAR"), so the page asks nothing of any other
    host; the split view serves its start-up script as a file, which the
    Content-Security-Policy allows without 'unsafe-inline'.
    """

    authentication_classes = ()
    permission_classes = ()
    throttle_classes = (AnonymousRateThrottle,)
    url_name = "api:schema"
    template_name = "api/docs.html"

    def get_exception_handler(self):
        return problem_exception_handler
