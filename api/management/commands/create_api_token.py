"""Issue an API token for a service account (made on first use); the token is printed once.

    python manage.py create_api_token airflow-prod --scope keys:read --scope syncs:write \\
        --institution northfield --expires-in-days 90

stdout carries only the token, so `TOKEN=$(python manage.py create_api_token ...)` works;
what was made goes to stderr. Running it again for an existing account adds
a token (for rotation); edit an existing account's institutions in the admin.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from api.models import Scope, ServiceAccount, validate_networks
from api.services import DEFAULT_TOKEN_DAYS, ApiRefused, api_token_issue
from credentials.formatting import format_day
from institutions.models import Institution


class Command(BaseCommand):
    help = "Create an API token for a service account (the account is made on first use). Prints the token once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="The service account, e.g. airflow-prod.")
        parser.add_argument("--scope", action="append", required=True, choices=Scope.values, dest="scopes")
        parser.add_argument("--institution", action="append", default=[], dest="institutions", metavar="SLUG")
        parser.add_argument("--all-institutions", action="store_true", help="A new account sees every institution.")
        parser.add_argument("--allowed-ip", action="append", default=[], dest="allowed_ips", metavar="IP_OR_CIDR")
        parser.add_argument("--expires-in-days", type=int, default=DEFAULT_TOKEN_DAYS)

    def handle(self, *args, name, scopes, institutions, all_institutions, allowed_ips, expires_in_days, **options):
        with transaction.atomic():
            account = ServiceAccount.objects.filter(name=name).first()
            if account is None:
                account = self._create_account(name, institutions, all_institutions, allowed_ips)
            elif institutions or all_institutions or allowed_ips:
                raise CommandError(
                    f"The account {name!r} exists: change its institutions and addresses in the admin, "
                    f"or leave out --institution/--all-institutions/--allowed-ip to add a token."
                )
            try:
                issued = api_token_issue(
                    account=account,
                    scopes=scopes,
                    expires_in_days=expires_in_days,
                    actor_label="manage.py create_api_token",
                )
            except ApiRefused as exc:
                raise CommandError(str(exc)) from None
        token = issued.token
        seen = "every institution" if account.all_institutions else f"{account.institutions.count()} institution(s)"
        self.stderr.write(
            f"Token {token.prefix}… for {account.name} ({seen}); scopes {', '.join(token.scopes)}; "
            f"expires {format_day(token.expires_at)}. It is shown only now: store it in your secret store."
        )
        self.stdout.write(issued.plaintext)

    def _create_account(self, name, slugs, all_institutions, allowed_ips) -> ServiceAccount:
        if bool(slugs) == bool(all_institutions):
            raise CommandError(
                "Name the institutions the account may see (--institution SLUG ...) or --all-institutions."
            )
        found = list(Institution.objects.filter(slug__in=slugs))
        missing = sorted(set(slugs) - {i.slug for i in found})
        if missing:
            raise CommandError(f"No institution has the slug(s): {', '.join(missing)}.")
        networks = "\n".join(allowed_ips)
        try:
            validate_networks(networks)
        except Exception as exc:
            raise CommandError(" ".join(exc.messages)) from None
        account = ServiceAccount.objects.create(name=name, all_institutions=all_institutions, allowed_ips=networks)
        account.institutions.set(found)
        return account
