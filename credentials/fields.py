"""Encryption at rest for model fields.

Why our own field: django-fernet-fields (named by the design) imports
`force_text`, removed in Django 4.0, so it cannot load on Django 5.2; its
successor django-fernet-encrypted-fields returns the ciphertext as the value
when decryption fails and derives its keys from SECRET_KEY. This field keeps
django-fernet-fields' convention (FERNET_KEYS, newest first, older keys still
decrypt) on cryptography's MultiFernet, and fails loudly instead.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core import checks
from django.core.exceptions import FieldError, ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import models
from django.dispatch import receiver


class DecryptionError(Exception):
    """A stored value that no configured key decrypts.

    Raised instead of returning the ciphertext or an empty value, so that a
    wrong FERNET_KEYS can never show garbage or save it back over the data.
    """


def build_fernets(keys: list[str]) -> list[Fernet]:
    """One Fernet per key, newest first; a malformed key raises ImproperlyConfigured."""
    if not keys:
        raise ImproperlyConfigured("FERNET_KEYS is empty: configure at least one key.")
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key.strip().encode()))
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                f"FERNET_KEYS entry {position} is not a valid Fernet key (32 url-safe base64 "
                f"bytes). Generate one with: python manage.py generate_encryption_key"
            ) from None
    return fernets


@functools.cache
def get_fernets() -> tuple[Fernet, ...]:
    return tuple(build_fernets(list(settings.FERNET_KEYS)))


def get_multifernet() -> MultiFernet:
    return MultiFernet(list(get_fernets()))


def primary_fernet() -> Fernet:
    return get_fernets()[0]


@receiver(setting_changed)
def _reset_keys(*, setting: str, **kwargs) -> None:
    if setting == "FERNET_KEYS":
        get_fernets.cache_clear()


def client_id_index(client_id: str) -> str:
    """The blind index of a Client ID: HMAC-SHA256 under CLIENT_ID_INDEX_KEY, hex.

    Equal Client IDs give equal indexes, so the database can enforce "one
    Client ID, one institution" on an encrypted column. The key is its own
    secret (not a Fernet key), so rotating FERNET_KEYS changes no index.
    Not secret-equivalent (it cannot be turned back into the Client ID
    without the key) but never logged or shown either.
    """
    key = str(settings.CLIENT_ID_INDEX_KEY or "")
    if not key:
        raise ImproperlyConfigured("CLIENT_ID_INDEX_KEY is empty: configure the key of the Client ID's blind index.")
    return hmac.new(key.encode(), client_id.strip().encode(), hashlib.sha256).hexdigest()


def encrypt_str(value: str) -> str:
    return primary_fernet().encrypt(value.encode()).decode("ascii")


def decrypt_str(token: str, *, what: str = "an encrypted value") -> str:
    try:
        return get_multifernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError):
        # The message names the column, never the token or any part of it.
        raise DecryptionError(
            f"Cannot decrypt {what}: none of the configured FERNET_KEYS matches it. "
            f"Restore the key it was written with to FERNET_KEYS (older keys go after the newest)."
        ) from None


class EncryptedTextField(models.TextField):
    """A text field stored as a Fernet token; the plaintext lives only in memory.

    No lookups but isnull (the ciphertext of equal values differs every
    time), no index, no uniqueness: all refused loudly. No ordering either
    (ciphertext order is random): the system check
    credentials.checks.check_no_ordering_by_encrypted_fields refuses every
    ordering it can see (Meta.ordering, the admins' ordering, sortable
    columns and searches); Django offers fields no public hook to refuse an
    order_by() at run time.
    """

    description = "Text encrypted at rest with Fernet"

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("editable", True)
        super().__init__(*args, **kwargs)

    def check(self, **kwargs):
        errors = super().check(**kwargs)
        for option in ("primary_key", "unique", "db_index"):
            if getattr(self, option, False):
                errors.append(
                    checks.Error(
                        f"EncryptedTextField cannot have {option}=True: ciphertext is not comparable.",
                        obj=self,
                        id="credentials.E010",
                    )
                )
        return errors

    # Django's documented hooks for which lookups and transforms a field has
    # (docs: "How Django determines the lookups and transforms which are
    # used"). Raising instead of returning None names the encrypted field in
    # the error, where Django's own would only say "Unsupported lookup".
    def get_lookup(self, lookup_name):
        if lookup_name == "isnull":  # compares no ciphertext
            return super().get_lookup(lookup_name)
        raise FieldError(f"{self.name} is encrypted: it cannot be filtered with __{lookup_name}.")

    def get_transform(self, lookup_name):
        raise FieldError(f"{self.name} is encrypted: it cannot be filtered with __{lookup_name}.")

    def get_db_prep_save(self, value, connection):
        value = super().get_db_prep_save(value, connection)
        if value is None:
            return None
        return encrypt_str(str(value))

    def from_db_value(self, value, expression, connection):
        if value is None:
            return None
        return decrypt_str(value, what=f"{self.model._meta.db_table}.{self.column}")
