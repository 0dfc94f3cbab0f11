"""What the browser tests share: a customer-success staff member whatever tests ran before."""

from __future__ import annotations

import importlib

import pytest
from django.contrib.auth.models import Group, Permission


@pytest.fixture
def customer_success(make_staff):
    """A "Customer success" staff member; the role's group made again as the migrations make it if a flush took it.

    A transactional test's flush removes the migrations' data (the roles) for the tests after it;
    serialized_rollback would reload them, but clashes with the content types post_migrate re-creates.
    """
    if not Group.objects.filter(name="Customer success").exists():
        roles = importlib.import_module("credentials.migrations.0004_fill_state_columns_and_move_roles")
        outbox = importlib.import_module("credentials.migrations.0010_outbox")
        links_and_reminders = importlib.import_module("credentials.migrations.0026_one_live_link_and_reminder_list")
        names = [
            *roles.CUSTOMER_SUCCESS,
            *(f"credentials.{codename}" for codename in outbox.ROLE_ADDITIONS["Customer success"]),
            f"credentials.{links_and_reminders.EXPORT_REMINDERS}",
        ]
        group = Group.objects.create(name="Customer success")
        for name in names:
            app_label, codename = name.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return make_staff("Customer success", username="cara")
