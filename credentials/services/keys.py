"""Keys: store one, make it the active key, record a check against CD2, end it.

A key is never edited in place: a new key supersedes the old one, which stays
as history. `credential_check_record` is the one writer of a check's result.
Every change of which key an institution has, or of its status, moves the
institution's `updated_at`: the API's `changed_at`, which a pipeline polls
with `?changed_since=`. `institution_key_summary_refresh` is the one writer
of the institution's stored key summary (Institution.key_*), called in the
same transaction as every change of a key's status, expiry or check.
Activation, invalid and revoked send credentials.signals.key_events inside
that transaction (the API's webhooks listen).
"""

from __future__ import annotations

import datetime as dt
import functools
import threading

from django.conf import settings
from django.db import transaction
from django.db.models import Expression
from django.utils import timezone

from credentials.cd2 import CheckResult, Verdict
from credentials.formatting import format_day, format_moment
from credentials.models import AuditEvent, CD2Credential, SubmissionLink
from credentials.selectors import key_summary_drift, key_summary_expected, newer_key_in_hand
from credentials.services.audit import audit_record
from credentials.signals import KEY_ACTIVATED, KEY_INVALID, KEY_REVOKED, key_event_send
from credentials.validators import CleanKey
from institutions.models import Institution

# The width of CD2Credential.last_verification.
CHECK_TEXT_LENGTH = 200


def institution_key_summary_refresh(
    *, institution_id: int, changed_at: dt.datetime | None = None, fields: tuple[str, ...] | None = None
) -> None:
    """Rewrite the institution's key summary from its keys (one UPDATE); with `changed_at`, move updated_at too.

    Call it in the transaction that changed a key's status, expiry or check
    result, after the change. `changed_at` says which key the institution
    has changed (a queryset update: auto_now only runs on save()). `fields`
    rewrites only those columns of the summary: a sent reminder changes
    key_reminded_unanswered alone, and the whole summary's subqueries were
    most of a reminder's database time (bench/RESULTS.md).
    """
    values = dict(_summary_expressions(fields=fields))
    if changed_at is not None:
        values["updated_at"] = changed_at
    Institution.objects.filter(pk=institution_id).update(**values)


class _CompiledOnce(Expression):
    """An expression whose SQL is compiled on its first use, per database, and reused after.

    Django compiles a queryset afresh on every execution, and the key
    summary's subqueries cost several times more to resolve and compile than
    the UPDATE costs to run (bench/summary_refresh.py); the refresh runs once
    per sent reminder. Only for institution_key_summary_refresh's statement,
    where it is sound: the wrapped expression names no institution (it refers
    to the row being updated through OuterRef("pk")), its parameters are the
    rule's constants, and the statement around it is always the same
    `Institution.objects.filter(pk=...).update(...)`, so its SQL is the same
    text on every call. The public expression API (resolve_expression,
    as_sql, compiler.compile) does the work; tests compare the statement
    with the one Django compiles afresh.
    """

    def __init__(self, expression) -> None:
        super().__init__(output_field=expression.output_field)
        self.expression = expression
        self._resolved = None
        self._compiled: dict[str, tuple[str, tuple]] = {}  # by database alias
        # Sender threads share it; compiling mutates the resolved subqueries, so one thread at a time.
        self._lock = threading.Lock()

    def resolve_expression(self, query=None, allow_joins=True, reuse=None, summarize=False, for_save=False):
        if self._resolved is None:
            with self._lock:
                if self._resolved is None:
                    self._resolved = self.expression.resolve_expression(query, allow_joins, reuse, summarize, for_save)
        return self

    def as_sql(self, compiler, connection):
        if connection.alias not in self._compiled:
            with self._lock:
                if connection.alias not in self._compiled:
                    sql, params = compiler.compile(self._resolved)
                    self._compiled[connection.alias] = (sql, tuple(params))
        return self._compiled[connection.alias]


@functools.cache
def _summary_expressions(*, fields: tuple[str, ...] | None) -> dict[str, _CompiledOnce]:
    """selectors.key_summary_expected(fields=...), built once per process, each column compiled once."""
    return {name: _CompiledOnce(expression) for name, expression in key_summary_expected(fields=fields).items()}


def key_summaries_drifted() -> list[int]:
    """Ids of institutions whose stored key summary is not what their keys say (should be none)."""
    return list(key_summary_drift().order_by("pk").values_list("pk", flat=True))


def key_summaries_fix(*, institution_ids: list[int] | None) -> int:
    """Rewrite the key summary of these institutions (None: all) from their keys; returns how many rows were written."""
    institutions = Institution.objects.all()
    if institution_ids is not None:
        institutions = institutions.filter(pk__in=institution_ids)
    return institutions.update(**key_summary_expected())


def credential_mark_pulled(*, credential: CD2Credential, now: dt.datetime) -> None:
    """The pipeline pulled data with this key (an API sync report of ok): shown to staff as "last data pulled"."""
    credential.last_pulled_at = now
    CD2Credential.objects.filter(pk=credential.pk).update(last_pulled_at=now)


def credential_check_request(*, credential: CD2Credential, now: dt.datetime) -> None:
    """Note that a check of this key was asked for (the pipeline saw it fail), until CD2 answers about it.

    The request is a column, not only a queued task: with the broker down
    the task is lost, and the hourly sweep (selectors.checks_requested_due)
    queues the check again. The earliest open request is kept.
    """
    CD2Credential.objects.filter(pk=credential.pk, check_requested_at__isnull=True).update(check_requested_at=now)


def credential_check_record(
    *, credential: CD2Credential, check: CheckResult, now: dt.datetime, count_attempt: bool = False
) -> list[str]:
    """Write what a check found onto `credential` (verdict, words, when); returns the fields to save.

    The caller saves them (in its own transaction, often with other fields).
    Only rejected and forbidden are verdicts on the key; the caller decides
    what they do to its status. A gateway that could not answer leaves
    last_verified_at (the last time the gateway said anything about the key)
    alone, except for the attempts at a pending key (count_attempt), whose
    time the sweep for lost re-checks reads.
    """
    credential.last_verdict = check.verdict.value
    fields = ["last_verdict", "last_verification"]
    if check.verdict is Verdict.UNAVAILABLE:
        # Stored text read later by anyone: the zone is named (UTC), not the current one.
        text = f"{check.summary} at {format_moment(now, 'UTC', with_zone=True)}: not a verdict on the key"
    else:
        text = check.summary
    credential.last_verification = text[:CHECK_TEXT_LENGTH]
    if check.verdict is not Verdict.UNAVAILABLE and credential.check_requested_at is not None:
        credential.check_requested_at = None  # the check asked for has its answer
        fields.append("check_requested_at")
    if check.verdict is not Verdict.UNAVAILABLE or count_attempt:
        credential.last_verified_at = now
        fields.append("last_verified_at")
    if count_attempt:
        credential.verification_attempts += 1
        fields.append("verification_attempts")
    return fields


def credential_create(
    *,
    institution: Institution,
    key: CleanKey,
    source: str,
    status: str = CD2Credential.Status.PENDING_VERIFICATION,
    check: CheckResult | None = None,
    submitted_by: str = "",
    submitted_by_email: str = "",
    created_by=None,
    submission_link: SubmissionLink | None = None,
    key_name: str = "",
    key_type: str = CD2Credential.KeyType.INSTITUTIONAL,
    pending_reason: str = "",
    now: dt.datetime | None = None,
) -> CD2Credential:
    """Store a validated key; as ACTIVE it supersedes the institution's current key.

    `key` comes from validators.validate_key_input, so no door can store a
    key that skipped validation. `check` is the live check made before
    storing, if any.
    """
    now = now or timezone.now()
    if status not in (CD2Credential.Status.ACTIVE, CD2Credential.Status.PENDING_VERIFICATION):
        raise ValueError(f"A new key starts active or pending_verification, not {status}.")
    credential = CD2Credential(
        institution=institution,
        client_id=key.client_id,
        client_id_index=key.index,
        secret=key.secret,
        region=key.region,
        hint=key.hint,
        key_name=key_name or settings.CD2_KEY_NAME,
        key_type=key_type,
        expires_on=key.expires_on,
        status=CD2Credential.Status.PENDING_VERIFICATION,
        source=source,
        submitted_at=now,
        submitted_by=submitted_by,
        submitted_by_email=submitted_by_email,
        created_by=created_by,
        submission_link=submission_link,
        status_changed_at=now,
        pending_reason=pending_reason if status == CD2Credential.Status.PENDING_VERIFICATION else "",
    )
    if check is not None:
        credential_check_record(credential=credential, check=check, now=now)
    with transaction.atomic():
        if status == CD2Credential.Status.ACTIVE:
            # Written active at once (one INSERT, not an INSERT and an UPDATE):
            # the institution's current key is superseded first, under its lock.
            _active_key_supersede(credential=credential, now=now)
            credential.status = CD2Credential.Status.ACTIVE
            credential.save(force_insert=True)
            institution_key_summary_refresh(institution_id=institution.pk, changed_at=now)
            key_event_send(event_type=KEY_ACTIVATED, credential=credential, occurred_at=now)
        else:
            credential.save(force_insert=True)
            institution_key_summary_refresh(institution_id=institution.pk, changed_at=now)
    return credential


def _active_key_supersede(*, credential: CD2Credential, now: dt.datetime) -> None:
    """Lock the key's institution and make its active key (other than this one) history.

    Call inside a transaction. The lock makes two activations for one
    institution run one after the other instead of tripping the
    one-active-key constraint.
    """
    Institution.objects.select_for_update().filter(pk=credential.institution_id).first()
    CD2Credential.objects.filter(institution_id=credential.institution_id, status=CD2Credential.Status.ACTIVE).exclude(
        pk=credential.pk
    ).update(
        status=CD2Credential.Status.SUPERSEDED,
        status_changed_at=now,
        status_reason=f"Superseded by key {credential.hint} on {format_day(now)}",
    )


def credential_activate(
    *, credential: CD2Credential, check: CheckResult | None = None, now: dt.datetime | None = None
) -> CD2Credential:
    """Make this key the institution's active key; the previous one becomes history.

    The institution row is locked first, so two activations for one
    institution run one after the other instead of tripping the
    one-active-key constraint.
    """
    now = now or timezone.now()
    with transaction.atomic():
        _active_key_supersede(credential=credential, now=now)
        credential.status = CD2Credential.Status.ACTIVE
        credential.status_changed_at = now
        credential.status_reason = ""
        credential.pending_reason = ""
        fields = ["status", "status_changed_at", "status_reason", "pending_reason"]
        if check is not None:
            fields += credential_check_record(credential=credential, check=check, now=now)
        credential.save(update_fields=fields)
        institution_key_summary_refresh(institution_id=credential.institution_id, changed_at=now)
        key_event_send(event_type=KEY_ACTIVATED, credential=credential, occurred_at=now)
    return credential


def credential_check_save(*, credential: CD2Credential, check: CheckResult, now: dt.datetime) -> None:
    """Record a check that leaves the key's status as it is (passed, or CD2 could not say), with its summary."""
    fields = credential_check_record(credential=credential, check=check, now=now)
    with transaction.atomic():
        CD2Credential.objects.filter(pk=credential.pk).update(**{name: getattr(credential, name) for name in fields})
        institution_key_summary_refresh(institution_id=credential.institution_id)


def credential_supersede(*, credential: CD2Credential, reason: str, now: dt.datetime | None = None) -> None:
    """A pending key that will never be used: a newer key became active before it could be checked."""
    now = now or timezone.now()
    with transaction.atomic():
        CD2Credential.objects.filter(pk=credential.pk).update(
            status=CD2Credential.Status.SUPERSEDED, status_changed_at=now, status_reason=reason[:500]
        )
        credential.status = CD2Credential.Status.SUPERSEDED
        institution_key_summary_refresh(institution_id=credential.institution_id, changed_at=now)


def credential_set_status(
    *, credential: CD2Credential, status: str, reason: str = "", now: dt.datetime | None = None
) -> CD2Credential:
    """Move a key to revoked or invalid (never back): the row stays as history."""
    if status not in (CD2Credential.Status.REVOKED, CD2Credential.Status.INVALID):
        raise ValueError("Use credential_activate to make a key active.")
    credential.status = status
    credential.status_changed_at = now or timezone.now()
    credential.status_reason = reason[:500]
    with transaction.atomic():
        credential.save(update_fields=["status", "status_changed_at", "status_reason"])
        institution_key_summary_refresh(
            institution_id=credential.institution_id, changed_at=credential.status_changed_at
        )
        key_event_send(
            event_type=KEY_REVOKED if status == CD2Credential.Status.REVOKED else KEY_INVALID,
            credential=credential,
            occurred_at=credential.status_changed_at,
        )
    return credential


# The keys an institution is using or about to use: lost, they leave it without a key.
CURRENT_STATUSES = (CD2Credential.Status.ACTIVE, CD2Credential.Status.PENDING_VERIFICATION)


def credentials_mark_lost(
    *, credential_ids: list[int], reason: str, actor_label: str, now: dt.datetime | None = None
) -> list[int]:
    """Wipe these keys' Client ID, Secret and blind index (no configured key reads them), in one transaction.

    A key in use (active or pending) becomes lost ("lost: ask for a new
    key"), and its institution's summary says so; a key already history
    (superseded, revoked, invalid) keeps its status, only its unreadable
    values go. The blind index goes too, so the customer may hand the same
    key over again. Each key gets an audit event (keys_lost) with the
    operator's reason. Returns the ids of the institutions whose key was lost.
    The values are never read: the rows are loaded without them.
    """
    now = now or timezone.now()
    keys = list(
        CD2Credential.objects.without_secrets()
        .select_related("institution")
        .filter(pk__in=credential_ids)
        .order_by("pk")
    )
    lost_institutions: set[int] = set()
    with transaction.atomic():
        CD2Credential.objects.filter(pk__in=[key.pk for key in keys]).update(
            client_id=None, secret=None, client_id_index=None
        )
        for key in keys:
            before = key.status
            if before in CURRENT_STATUSES:
                lost_institutions.add(key.institution_id)
                CD2Credential.objects.filter(pk=key.pk).update(
                    status=CD2Credential.Status.LOST,
                    status_changed_at=now,
                    status_reason=f"Unreadable: FERNET_KEYS lost ({reason})"[:500],
                    pending_reason="",
                )
            audit_record(
                kind=AuditEvent.Kind.KEYS_LOST,
                actor_label=actor_label,
                credential=key,
                reason=reason,
                detail={"hint": key.hint, "status_before": before, "wiped": ["client_id", "secret"]},
            )
        for institution_id in sorted({key.institution_id for key in keys}):
            institution_key_summary_refresh(
                institution_id=institution_id, changed_at=now if institution_id in lost_institutions else None
            )
    return sorted(lost_institutions)


def new_key_request_stale(*, credential: CD2Credential) -> str:
    """Why a notice asking for a new key in place of this (invalid) one need not go out now; "" when it must.

    The supersede rule of the notices that say a key does not work ("your
    key stopped working", "your new key does not work"): the customer has
    since handed over a newer key, the key is no longer invalid (revoked),
    or the institution is paused or offboarded.
    """
    institution = credential.institution
    if CD2Credential.objects.filter(pk=credential.pk).filter(newer_key_in_hand()).exists():
        return "Not sent: a newer key for this institution has arrived since."
    if credential.status != CD2Credential.Status.INVALID:
        return f"Not sent: the key is {credential.get_status_display().lower()} now."
    if not institution.is_served():
        return f"Not sent: {institution.name} is {institution.get_status_display().lower()}."
    return ""
