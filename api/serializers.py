"""The API's request and response shapes (and, through drf-spectacular, its schema)."""

from __future__ import annotations

from rest_framework import serializers

from api.models import SyncReport
from institutions.models import KeyState


class KeySummarySerializer(serializers.Serializer):
    """One institution and its key, from institutions_with_key_status: no Secret, no Client ID."""

    slug = serializers.SlugField()
    name = serializers.CharField()
    canvas_domain = serializers.CharField()
    institution_status = serializers.CharField(source="status")
    key_state = serializers.ChoiceField(choices=KeyState.choices)
    key_id = serializers.IntegerField(source="active_key_id", allow_null=True)
    hint = serializers.CharField(source="active_hint", allow_null=True)
    region = serializers.CharField(source="active_region", allow_null=True)
    expires_on = serializers.DateField(source="active_expires_on", allow_null=True)
    days_left = serializers.IntegerField(
        allow_null=True,
        help_text="Whole days from the institution's today (in its time zone) to expires_on; negative once expired.",
    )
    last_checked_at = serializers.DateTimeField(source="active_last_verified_at", allow_null=True)
    changed_at = serializers.DateTimeField(
        source="updated_at", help_text="Moves when the institution or which key it has (or its status) changes."
    )


class KeyListQuerySerializer(serializers.Serializer):
    changed_since = serializers.DateTimeField(
        required=False, help_text="Only institutions with changed_at at or after this instant (ISO 8601)."
    )


class KeySerializer(serializers.Serializer):
    client_id = serializers.CharField()
    client_secret = serializers.CharField()
    expires_on = serializers.DateField()
    region = serializers.CharField()
    key_id = serializers.IntegerField()


class SyncReportInSerializer(serializers.Serializer):
    key_id = serializers.IntegerField(min_value=1)
    outcome = serializers.ChoiceField(choices=SyncReport.Outcome.choices)
    detail = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class SyncReportOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    outcome = serializers.CharField()
    check_queued = serializers.BooleanField(help_text="A check of the key against CD2 was queued.")
    active_key_id = serializers.IntegerField(
        allow_null=True, help_text="The key to use now; differs from key_id when the report was about an old key."
    )


class ProblemSerializer(serializers.Serializer):
    type = serializers.CharField()
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    code = serializers.CharField()
