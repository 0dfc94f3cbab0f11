"""Fuzzing the one validation path: anything in, a CleanKey or a ValidationError out, never the secret echoed."""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import ValidationError
from hypothesis import example, given
from hypothesis import strategies as st

from credentials.validators import CLIENT_ID_RE, MAX_KEY_LIFETIME, MAX_SECRET_LENGTH, validate_key_input

TODAY = dt.date(2026, 11, 26)

# Everything a form field, an import file or a careless caller could hand over.
anything = st.one_of(
    st.none(),
    st.text(),  # arbitrary unicode, control characters, surrogates excluded by Hypothesis
    st.text(alphabet=st.characters(codec="ascii"), min_size=0, max_size=3000),
    st.text(min_size=900, max_size=5000),  # huge
    st.binary(max_size=200),
    st.integers(),
    st.floats(allow_nan=True),
    st.dates(),
    st.datetimes(),
    st.lists(st.text(max_size=20), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
    st.from_regex(r"[a-z]{2}-[a-z]+-[0-9]#[0-9a-f-]{8,40}", fullmatch=True),  # plausible Client IDs
    st.dates(min_value=TODAY - dt.timedelta(days=5), max_value=TODAY + dt.timedelta(days=1200)).map(str),
)


def wording(*, client_id, expires_on) -> str:
    """The messages for these inputs whatever the secret: a secret that is a word of them ("date") is not an echo."""
    texts = []
    for neutral in (None, client_id):  # no secret; a secret the same as the Client ID
        try:
            validate_key_input(client_id=client_id, secret=neutral, expires_on=expires_on, today=TODAY)
        except ValidationError as exc:
            texts += [m for ms in exc.message_dict.values() for m in ms]
    return " ".join(texts)


@given(client_id=anything, secret=anything, expires_on=anything)
@example(client_id=None, secret="date", expires_on=None)  # "date" is in the expiry message's own wording
@example(client_id="us-east-1#abc", secret="s\x00cret", expires_on="2027-01-01")
@example(client_id="us-east-1#abc", secret="us-east-1#abc", expires_on="2027-01-01")
@example(client_id="ａ#ｂ", secret="x" * (MAX_SECRET_LENGTH + 1), expires_on="9999-12-31")
@example(client_id="us-east-1#abc\n", secret="tab\tin", expires_on="2027-02-30")
def test_validation_returns_a_clean_key_or_a_field_keyed_error_and_never_echoes_the_secret(
    client_id, secret, expires_on
):
    try:
        key = validate_key_input(client_id=client_id, secret=secret, expires_on=expires_on, today=TODAY)
    except ValidationError as exc:
        assert set(exc.message_dict) <= {"client_id", "secret", "expires_on"} and exc.message_dict
        text = " ".join(m for ms in exc.message_dict.values() for m in ms)
        if isinstance(secret, str) and len(secret.strip()) >= 4:
            assert secret.strip() not in text or secret.strip() in wording(client_id=client_id, expires_on=expires_on)
        return
    # Accepted: every promise of CleanKey holds.
    assert CLIENT_ID_RE.fullmatch(key.client_id) and key.client_id.isascii()
    assert key.secret and key.secret.isascii() and key.secret.isprintable() and len(key.secret) <= MAX_SECRET_LENGTH
    assert not any(c.isspace() for c in key.secret) and key.secret != key.client_id
    assert TODAY < key.expires_on <= TODAY + MAX_KEY_LIFETIME
    assert key.secret not in repr(key) and key.client_id not in repr(key)
