"""Ask every institution we serve for a new key: one submission link each, queued at the bulk rate.

For when the stored keys cannot be used any more, above all a lost
FERNET_KEYS (docs/RUNBOOK.md): nobody but the customers can make new keys.
The same bulk send as the admin's action (services/links.link_batch_create):
queued LINK_BULK_PER_SECOND apart, each institution mailed once, progress on
the admin page the command prints. The reason goes to the audit log.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from credentials.checks import check_stored_values_decrypt
from credentials.models import AuditEvent
from credentials.services.audit import audit_record
from credentials.services.links import link_batch_create
from credentials.services.staff import StaffActionRefused, clean_reason
from institutions.models import Institution


class Command(BaseCommand):
    help = (
        "Queue a new submission link for every institution we serve (onboarding or active), "
        "e.g. after FERNET_KEYS was lost."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--reason", required=True, help="why every institution is asked again (audited)")

    def handle(self, *args, reason: str, **options) -> None:
        try:
            reason = clean_reason(reason, what="bulk send")
        except StaffActionRefused as exc:
            raise CommandError(str(exc)) from None
        if check_stored_values_decrypt():
            # The workers would refuse to start (edpotential/startup.py): the links would wait for ever.
            raise CommandError(
                "Stored keys cannot be read with FERNET_KEYS, so the workers refuse to start and no link would be "
                "mailed. If the old key is lost for good, run `python manage.py mark_keys_lost` first "
                "(docs/RUNBOOK.md, “When FERNET_KEYS is lost”)."
            )
        ids = list(
            Institution.objects.filter(status__in=Institution.SERVED_STATUSES)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        if not ids:
            raise CommandError("No institution is onboarding or active: nobody to ask.")
        batch = link_batch_create(institution_ids=ids)
        audit_record(
            kind=AuditEvent.Kind.LINK_CREATED,
            actor_label="manage.py send_links_to_all",
            reason=reason,
            detail={"bulk": True, "batch_id": batch.pk, "institutions": len(ids)},
        )
        seconds = len(ids) / max(float(settings.LINK_BULK_PER_SECOND), 0.1)
        url = settings.SITE_URL + reverse("admin:institutions_institution_link_batch", args=[batch.pk])
        self.stdout.write(
            f"Queued a submission link for {len(ids)} institution(s), over about {seconds:.0f} s. Progress: {url}"
        )
