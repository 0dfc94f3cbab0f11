"""Staff second factors after enrolment: a staff member replaces their own authenticator; a superuser only deletes.

Nobody reads a confirmed seed or a recovery code back, superusers included
(credentials/admin/devices.py). Every step here writes an audit event.
"""

from __future__ import annotations

from django.db import transaction
from django_otp.models import Device
from django_otp.plugins.otp_totp.models import TOTPDevice

from credentials.models import AuditEvent
from credentials.services.audit import audit_record

NEW_AUTHENTICATOR_NAME = "authenticator app"


def authenticator_reset_start(*, user, ip_address: str | None = None) -> TOTPDevice:
    """A new, unconfirmed authenticator for `user`, whose QR code the caller shows once; audited.

    The current authenticator keeps working until the new one is confirmed,
    so an abandoned reset locks nobody out. An earlier unconfirmed one is
    dropped: only the newest QR code can be confirmed.
    """
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user, confirmed=False).delete()
        device = TOTPDevice.objects.create(user=user, name=NEW_AUTHENTICATOR_NAME, confirmed=False)
        audit_record(
            kind=AuditEvent.Kind.TWO_FACTOR_RESET,
            actor=user,
            ip_address=ip_address,
            detail={"device_id": device.pk},
        )
    return device


def authenticator_reset_confirm(
    *, user, device_id: int, token: str, ip_address: str | None = None
) -> TOTPDevice | None:
    """Confirm the new authenticator with a code it shows: it replaces every other; audited. None: wrong code."""
    with transaction.atomic():
        device = TOTPDevice.objects.select_for_update().filter(pk=device_id, user=user, confirmed=False).first()
        if device is None or not device.verify_token((token or "").strip()):
            return None
        replaced, _ = TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        audit_record(
            kind=AuditEvent.Kind.TWO_FACTOR_ENROLLED,
            actor=user,
            ip_address=ip_address,
            detail={"device_id": device.pk, "replaced": replaced},
        )
    return device


def two_factor_device_delete(*, device: Device, actor, ip_address: str | None = None) -> None:
    """Delete a staff member's authenticator or recovery codes (the only change allowed on them); audited."""
    with transaction.atomic():
        audit_record(
            kind=AuditEvent.Kind.TWO_FACTOR_DELETED,
            actor=actor,
            ip_address=ip_address,
            detail={
                "device": type(device).__name__,
                "device_id": device.pk,
                "owner": device.user.get_username(),
                "confirmed": device.confirmed,
            },
        )
        device.delete()
