"""Django's createsuperuser, whose password passes AUTH_PASSWORD_VALIDATORS with --noinput too.

Django checks the validators only when it prompts for the password; with
--noinput it takes DJANGO_SUPERUSER_PASSWORD as it is, so `a` made a
superuser. Here that password is checked first, against a user with the
username and email given, and refused with the validators' messages:
nothing is created. (SecurityConfig comes before django.contrib.auth in
INSTALLED_APPS, so this command takes the place of auth's.)
"""

from __future__ import annotations

import os

from django.contrib.auth.management.commands.createsuperuser import Command as DjangoCreateSuperuser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

PASSWORD_VARIABLE = "DJANGO_SUPERUSER_PASSWORD"  # noqa: S105 (the variable's name, not a password)


class Command(DjangoCreateSuperuser):
    help = DjangoCreateSuperuser.help + " The password must pass the password validators, with --noinput too."

    def handle(self, *args, **options):
        password = os.environ.get(PASSWORD_VARIABLE)
        if not options["interactive"] and password is not None:
            try:
                validate_password(password, self._user_as_given(options))
            except ValidationError as exc:
                raise CommandError(f"{PASSWORD_VARIABLE} is refused: " + " ".join(exc.messages)) from None
        return super().handle(*args, **options)

    def _user_as_given(self, options):
        """An unsaved user with the username and other fields given (options, else the environment)."""
        values = {}
        for name in (self.UserModel.USERNAME_FIELD, *self.UserModel.REQUIRED_FIELDS):
            value = options.get(name) or os.environ.get(f"DJANGO_SUPERUSER_{name.upper()}")
            field = self.UserModel._meta.get_field(name)
            if value and not field.many_to_many and not field.is_relation:
                values[name] = value
        return self.UserModel(**values)
