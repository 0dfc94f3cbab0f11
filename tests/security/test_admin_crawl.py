"""Crawl the whole staff admin as each role: no 5xx and no secret on any page.

Every URL the admin registers (walked from the URL resolver, object ids
filled from the rows made here), every sortable column both ways, every
filter choice plus hostile values (NUL, 5,000 characters, unicode) and
values no filter can hold (9999-12) for every filter parameter, years no
date holds (10000, 0, -1, 99999999999999999999, 9999) on every date column
and in the date drill-down, the search box, and every
action's confirmation page. Hostile values, sorts and filter choices meet
the same code whoever sends them: the superuser, who sees every filter and
column, sends them all, and each role only what its lists add (a parameter,
a column set, a filter choice a superuser lacks). Searched in every body: the planted Secret, the
full planted Client ID, a TOTP seed (hex and base32) and recovery codes. Read in every page's words
(issue 25, words for people): no raw exception text (a mail server's SMTPRecipientsRefused is planted;
only a notice's own page shows it, marked as the raw error), no app label in code form ("Axes",
"Otp_Static", an underscored label), and no 403 that does not name the permission it lacks.
The figures are printed with -s and recorded in SECURITY.md.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
from axes.models import AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from api.models import ServiceAccount
from api.services import api_sync_report, api_token_issue
from credentials.models import AuditEvent, Notice
from credentials.services.audit import audit_record
from credentials.services.links import submission_link_create
from staffsso.models import BreakGlassAccount, ProviderSession, StaffIdentity
from tests.conftest import PLANTED_CLIENT_ID, PLANTED_SECRET, reminder_step

ROLES = ("Viewer", "Customer success", "Data engineer", None)  # None: a superuser
HOSTILE_VALUES = ("\x00", "a\x00b", "x" * 5000, "ü\u202e😀€\u0000", "-1", "' OR 1=1 --")
# Values a filter or a date cannot hold (issue 24): a month past 9999-12, years no date or SQL bound holds.
# (9999 and 1 matter to the drill-down, whose bounds are the next year and the zone's midnight.)
OUT_OF_RANGE_VALUES = ("9999-12",)
YEARS_OUT_OF_RANGE = ("10000", "0", "-1", "99999999999999999999")
DRILL_DOWN_YEARS = (*YEARS_OUT_OF_RANGE, "9999", "1")
RECOVERY_CODES = ("crawlrec01", "crawlrec02")
PLANTED_REFRESH_TOKEN = "PLANTED-refresh-tKn-7Qe2Vw9"
PLANTED_ACCESS_TOKEN = "PLANTED-access-tKn-3Rf8Hj1"
# What a customer's mail server answers to an unknown address, as the outbox records it.
PLANTED_SEND_ERROR = "SMTPRecipientsRefused: {'ada@northfield.example.edu': (550, b'5.1.1 User unknown')}"
# Exception text a person should never have to read: a Python exception's name with its message, a traceback.
RAW_EXCEPTION = re.compile(
    r"\bSMTP[A-Za-z]*(?:Error|Refused|Disconnected)\b|Traceback \(most recent call last\)"
    r"|\b[A-Z][A-Za-z]*(?:Error|Exception): |\(\s*\d{3}\s*,\s*b['\"]"
)
# The raw error a notice's page keeps for staff who dig (credentials/admin/notices.py): meant to be raw.
RAW_ERROR_SHOWN = re.compile(r'<code class="raw-error">.*?</code>', re.S)


def visible_text(body: bytes) -> str:
    """The words a page shows: no scripts, styles, tags or attribute values; entities decoded."""
    text = RAW_ERROR_SHOWN.sub(" ", body.decode("utf-8", "replace"))
    text = re.sub(r"<(script|style|svg)\b.*?</\1>", " ", text, flags=re.S | re.I)
    text = re.sub(r"<[^>]*>", " ", text)
    return html.unescape(text)


def app_labels_in_code_form() -> dict[str, re.Pattern]:
    """Each admin app label's code forms ("otp_static", "Otp_Static", "Axes") as Django shows a label without words."""
    forms = {}
    for label in sorted({m._meta.app_label for m in admin.site._registry}):
        code = {label.title(), label.capitalize()} | ({label} if "_" in label else set())
        # A label that is an English word staff may read in a sentence ("institutions") is no code form.
        code -= {"Institutions", "Credentials"}
        if code:
            forms[label] = re.compile(r"(?<![\w/.-])(?:" + "|".join(map(re.escape, sorted(code))) + r")(?![\w/.-])")
    return forms


# ---------------------------------------------------------------------------
# Walking the resolver
# ---------------------------------------------------------------------------


def _route(pattern) -> str:
    return str(pattern.pattern)


def admin_url_names() -> list[tuple[str, str, type | None, list[str]]]:
    """(url name, route, model, its arguments) for every named admin URL; model: whose admin it belongs to."""
    models_by_prefix = {f"{m._meta.app_label}/{m._meta.model_name}/": m for m in admin.site._registry}
    (admin_resolver,) = [
        p for p in get_resolver().url_patterns if isinstance(p, URLResolver) and p.namespace == admin.site.name
    ]
    found = []

    def walk(patterns, prefix: str, model):
        for pattern in patterns:
            route = prefix + _route(pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route, models_by_prefix.get(_route(pattern), model))
            elif isinstance(pattern, URLPattern) and pattern.name:
                found.append((pattern.name, route, model, list(pattern.pattern.regex.groupindex)))

    walk(admin_resolver.url_patterns, "", None)
    return found


def urls_to_visit(world) -> list[str]:
    """Every named admin URL reversed with real arguments (each app label, each model's own row)."""
    app_labels = sorted({m._meta.app_label for m in admin.site._registry})
    urls = []
    for name, route, model, arguments in admin_url_names():
        full = f"{admin.site.name}:{name}"
        if not arguments:
            urls.append(reverse(full))
        elif arguments == ["app_label"]:
            urls.extend(reverse(full, kwargs={"app_label": label}) for label in app_labels)
        elif "content_type_id" in arguments:
            inst = world["institution"]
            ct = ContentType.objects.get_for_model(inst)
            urls.append(reverse(full, kwargs={"content_type_id": ct.pk, "object_id": inst.pk}))
        elif model is not None and len(arguments) == 1:
            pk = model._default_manager.order_by("pk").values_list("pk", flat=True).first()
            assert pk is not None, f"no {model._meta.label} row to crawl {name} with"
            (argument,) = arguments
            urls.append(reverse(full, kwargs={argument: pk}))
            if "<int:" not in route:
                urls.append(reverse(full, kwargs={argument: "999999999"}))  # a missing row
                urls.append(reverse(full, kwargs={argument: "not-a-number"}))
        else:
            raise AssertionError(f"do not know how to fill {route!r} ({name})")
    urls.append("/admin/no-such-page/")
    return urls


# ---------------------------------------------------------------------------
# The world: one row of everything, each with its secret planted
# ---------------------------------------------------------------------------


@pytest.fixture
def world(institution, make_credential, make_staff):
    owner = make_staff("Customer success", username="owner-of-northfield")
    institution.account_owner = owner
    institution.save()
    key = make_credential(institution, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET)
    submission_link_create(institution=institution, created_by=owner, reason="staff")
    reminder_step(key, 30, recipients="ada@northfield.example.edu")
    # A reminder the customer's mail server refused: the timeline, the reminder log and the dashboard show it.
    reminder_step(
        key, 14, state=Notice.State.FAILED, recipients="ada@northfield.example.edu", last_error=PLANTED_SEND_ERROR
    )
    audit_record(kind=AuditEvent.Kind.REVEAL, actor=owner, credential=key, reason="crawl")
    totp = TOTPDevice.objects.create(user=owner, name="owner phone", confirmed=True)
    static = StaticDevice.objects.create(user=owner, name="owner codes", confirmed=True)
    for token in RECOVERY_CODES:
        static.token_set.create(token=token)
    # A failed sign-in, and the rows axes keeps for its admin pages.
    Client().post("/admin/login/", {"username": owner.username, "password": "wrong"}, REMOTE_ADDR="10.66.0.1")
    axes_row = {"username": owner.username, "ip_address": "10.66.0.1", "user_agent": "crawl", "path_info": "/admin/"}
    AccessLog.objects.create(**axes_row, http_accept="*/*", attempt_time=timezone.now())
    AccessFailureLog.objects.create(**axes_row, http_accept="*/*", attempt_time=timezone.now(), locked_out=False)
    # A notice of the outbox that gave up (its page offers a resend).
    failed_notice = Notice.objects.create(
        kind=Notice.Kind.REMINDER,
        state=Notice.State.FAILED,
        dedupe_key=f"crawl-reminder-{key.pk}",
        institution=institution,
        credential=key,
        day=timezone.localdate(),
        as_of=timezone.now(),
        retry_until=timezone.now(),
        recipients="ada@northfield.example.edu",
        last_error=PLANTED_SEND_ERROR,
    )
    # The data pipeline's account, a token and one sync report (api/).
    account = ServiceAccount.objects.create(name="crawl-pipeline", all_institutions=True)
    issued = api_token_issue(account=account, scopes=["keys:read", "syncs:write"], created_by=owner)
    api_sync_report(token=issued.token, institution_slug=institution.slug, key_id=key.pk, outcome="ok")
    # Staff sign-in with the identity provider (staffsso): an identity, its
    # provider session holding tokens, and a break-glass account.
    identity = StaffIdentity.objects.create(
        user=owner, issuer="https://idp.example", subject="owner-sub", email="owner@uni.example", roles=["Viewer"]
    )
    ProviderSession.objects.create(
        user=owner, identity=identity, refresh_token=PLANTED_REFRESH_TOKEN, access_token=PLANTED_ACCESS_TOKEN
    )
    glass = make_staff(None, username="break-glass-admin", is_superuser=True)
    BreakGlassAccount.objects.create(user=glass, reason="provider outage")
    seed_b32 = base64.b32encode(totp.bin_key).decode()
    secrets = [
        issued.plaintext,
        PLANTED_SECRET,
        PLANTED_CLIENT_ID,
        totp.key,
        totp.key.upper(),
        seed_b32,
        seed_b32.rstrip("="),
        *RECOVERY_CODES,
        PLANTED_REFRESH_TOKEN,
        PLANTED_ACCESS_TOKEN,
    ]
    return {"institution": institution, "secrets": secrets, "failed_notice": failed_notice}


class Crawl:
    def __init__(self, client, secrets) -> None:
        self.client = client
        self.secrets = [s.encode() for s in secrets]
        self.problems: list[str] = []
        self.counts: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.label_forms = app_labels_in_code_form()
        self.forbidden = 0

    def check(self, what: str, url: str, response) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        self.statuses[url] = response.status_code
        if response.status_code >= 500:
            self.problems.append(f"{response.status_code} {what}: {url[:200]}")
        body = b"".join(response.streaming_content) if response.streaming else response.content
        for secret in self.secrets:
            if secret in body:
                self.problems.append(f"secret {secret[:6]!r}… in {what}: {url[:200]}")
        self.check_words(what, url, response, body)

    def check_words(self, what: str, url: str, response, body: bytes) -> None:
        """Words for people: no exception text, no app label in code form, no 403 that names no permission."""
        if "html" not in response.get("Content-Type", ""):
            return
        text = visible_text(body)
        raw = RAW_EXCEPTION.search(text)
        if raw:
            self.problems.append(f"raw exception text {raw.group(0)!r} in {what}: {url[:200]}")
        for label, form in self.label_forms.items():
            found = form.search(text)
            if found:
                self.problems.append(f"app label {label!r} in code form ({found.group(0)!r}) in {what}: {url[:200]}")
        if response.status_code == 403:
            self.forbidden += 1
            # Named, or (Django's search-as-you-type asked for no field it serves) said to be no permission.
            if "the permission “" not in text and "there is no permission to grant" not in text:
                self.problems.append(
                    f"403 without the permission it lacks in {what}: {url[:200]}: {text.strip()[:200]}"
                )

    def get(self, what: str, url: str, params: dict | None = None):
        full = url + ("?" + urlencode(params) if params else "")
        response = self.client.get(full)
        self.check(what, full, response)
        return response

    def post(self, what: str, url: str, data: dict):
        response = self.client.post(url, data)
        self.check(what, url + " " + str(data)[:100], response)
        return response


def hostile_parameters(cl) -> set[str]:
    """A changelist's parameters that take typed values: its filters', the search box's, the date drill-down's."""
    parameters = {parameter for spec in cl.filter_specs for parameter in spec.expected_parameters()}
    if cl.search_fields:
        parameters.add("q")
    if cl.date_hierarchy:
        parameters.update(f"{cl.date_hierarchy}__{part}" for part in ("year", "month", "day"))
    parameters.update(
        f"{field.name}__year" for field in cl.model._meta.concrete_fields if isinstance(field, models.DateField)
    )
    return parameters


@dataclass(frozen=True)
class SeenBySuperuser:
    """What the superuser's crawl of a list sends: a role's crawl need not send it again."""

    parameters: frozenset[str] = frozenset()  # typed parameters, each tried with every hostile value
    columns: tuple[str, ...] | None = None  # the columns, each sorted both ways (None: not seen)
    choices: frozenset[str] = frozenset()  # the filter choices' query strings


def crawl_changelist(crawl: Crawl, url: str, seen: SeenBySuperuser = SeenBySuperuser(), *, deep: bool = True) -> None:
    """Every sort, filter choice and action of a changelist; hostile values for each parameter not in `seen`.

    A role's crawl sorts only a list whose columns differ from the
    superuser's (the same columns sort with the same code, whoever asks)
    and follows only the filter choices the superuser's list did not offer.
    Not `deep`: the list and its actions' pages only.
    """
    tried = seen.parameters
    response = crawl.get("changelist", url)
    if response.status_code != 200 or response.context is None or "cl" not in response.context:
        return
    cl = response.context["cl"]
    if not deep:
        _crawl_actions(crawl, url, response)
        return
    if tuple(map(str, cl.list_display)) != seen.columns:
        for index in range(len(cl.list_display)):
            crawl.get("sort", url, {"o": str(index)})
            crawl.get("sort", url, {"o": f"-{index}"})
        for value in ("99", "1.2.x", "\x00"):
            crawl.get("sort", url, {"o": value})
    for spec in cl.filter_specs:
        for choice in spec.choices(cl):
            if choice["query_string"] not in seen.choices:
                crawl.get("filter choice", url + choice["query_string"])
        for parameter in set(spec.expected_parameters()) - tried:
            for value in (*HOSTILE_VALUES, *OUT_OF_RANGE_VALUES):
                crawl.get("filter hostile", url, {parameter: value})
    # Any date of the model's own, filtered by a year typed into the URL (the admin allows it).
    for field in cl.model._meta.concrete_fields:
        if isinstance(field, models.DateField) and f"{field.name}__year" not in tried:  # DateTimeField too
            for year in YEARS_OUT_OF_RANGE:
                crawl.get("date out of range", url, {f"{field.name}__year": year})
    if cl.search_fields and "q" not in tried:
        for value in HOSTILE_VALUES:
            crawl.get("search hostile", url, {"q": value})
    if cl.date_hierarchy:
        for part in ("year", "month", "day"):
            hierarchy_tried = f"{cl.date_hierarchy}__{part}" in tried
            for value in ("2026",) if hierarchy_tried else ("2026", *HOSTILE_VALUES, *DRILL_DOWN_YEARS):
                crawl.get("date hierarchy", url, {f"{cl.date_hierarchy}__{part}": value})
        if f"{cl.date_hierarchy}__year" not in tried:
            for year in DRILL_DOWN_YEARS:  # a drill-down to a month and a day of such a year
                crawl.get(
                    "date hierarchy", url, {f"{cl.date_hierarchy}__year": year, f"{cl.date_hierarchy}__month": "12"}
                )
                crawl.get(
                    "date hierarchy",
                    url,
                    {
                        f"{cl.date_hierarchy}__year": year,
                        f"{cl.date_hierarchy}__month": "12",
                        f"{cl.date_hierarchy}__day": "31",
                    },
                )
    _crawl_actions(crawl, url, response)


def _crawl_actions(crawl: Crawl, url: str, response) -> None:
    cl = response.context["cl"]
    pk = cl.model._default_manager.order_by("pk").values_list("pk", flat=True).first()
    for name in cl.model_admin.get_actions(response.wsgi_request):
        # No "post": the confirmation page where an action has one.
        crawl.post("action", url, {"action": name, "_selected_action": [pk], "index": 0})


def seen_by_superuser(changelists, make_staff, verified_login) -> dict[str, SeenBySuperuser]:
    """Each changelist as a superuser sees it: what the superuser's crawl sends to it."""
    client = verified_login(Client(), make_staff(None, is_superuser=True, username="crawl-superuser"))
    seen = {}
    for url in changelists:
        response = client.get(url)
        assert response.status_code == 200, url
        cl = response.context["cl"]
        seen[url] = SeenBySuperuser(
            parameters=frozenset(hostile_parameters(cl)),
            columns=tuple(map(str, cl.list_display)),
            choices=frozenset(choice["query_string"] for spec in cl.filter_specs for choice in spec.choices(cl)),
        )
    return seen


def signed_in_by_sso(request, role: str | None) -> tuple[Client, list[str]]:
    """A client signed in through the test OpenID provider with the group of `role`; the session's tokens.

    The tokens the provider gave (refresh and access) join the planted
    secrets: no admin page may show them either.
    """
    from staffsso.models import ProviderSession
    from tests.staffsso.provider import ROLE_GROUP

    provider = request.getfixturevalue("sso_settings")
    sub = provider.person(f"crawl-{ROLE_GROUP[role or 'Superuser']}", groups=[ROLE_GROUP[role or "Superuser"]])
    client = Client(raise_request_exception=False)
    assert provider.sign_in(client, sub).status_code == 302
    session = ProviderSession.objects.get(identity__subject=sub)
    assert session.refresh_token and session.access_token
    return client, [session.refresh_token, session.access_token]


# The same crawl for a person signed in with the identity provider (staffsso):
# every URL, every list and every action page; not the sorts, filter choices
# and hostile values, which meet the same code whichever way the session
# signed in. One provider process for these, on one worker.
SIGN_INS = [
    pytest.param("password", id="password"),
    pytest.param("sso", id="sso", marks=pytest.mark.xdist_group("oidc_provider_crawl")),
]


@pytest.mark.parametrize("sign_in", SIGN_INS)
@pytest.mark.parametrize("role", ROLES, ids=lambda role: role or "superuser")
def test_every_admin_page_as_every_role_answers_without_a_server_error_or_a_secret(
    role, sign_in, world, make_staff, verified_login, capsys, request
):
    if sign_in == "sso":
        client, tokens = signed_in_by_sso(request, role)
    else:
        staff = make_staff(role, is_superuser=role is None)
        client, tokens = verified_login(Client(raise_request_exception=False), staff), []
    crawl = Crawl(client, world["secrets"] + tokens)
    urls = urls_to_visit(world)
    changelists = {reverse(f"admin:{m._meta.app_label}_{m._meta.model_name}_changelist") for m in admin.site._registry}
    # A hostile value, a sort or a filter choice meets the same code whoever
    # sends it: the superuser's crawl (which sees every filter and column)
    # sends each, and a role's sends only what its lists add to the superuser's.
    seen = {} if role is None else seen_by_superuser(changelists, make_staff, verified_login)
    for url in urls:
        if url in changelists:
            # Signed in by the provider: the same pages and actions; sorts, filter
            # choices and hostile values meet the same code whichever way the
            # session signed in, and the password crawl sends them.
            crawl_changelist(crawl, url, seen.get(url, SeenBySuperuser()), deep=sign_in == "password")
        else:
            crawl.get("page", url)

    if role is None:
        # The raw send error is kept for the staff who open its notice, marked as such (and in words above it).
        notice_page = crawl.get("page", reverse("admin:credentials_notice_change", args=[world["failed_notice"].pk]))
        assert b'<code class="raw-error">SMTPRecipientsRefused:' in notice_page.content
        assert "the address was refused: user unknown" in visible_text(notice_page.content)
    assert crawl.problems == [], "\n".join(crawl.problems[:60])
    # The crawl reached the pages: a session that lost its sign-in would pass vacuously.
    assert crawl.statuses[reverse("admin:index")] == 200
    reachable = [url for url in changelists if crawl.statuses[url] == 200]
    if role is None:
        assert len(reachable) == len(changelists)
    else:
        assert reverse("admin:institutions_institution_changelist") in reachable
    with capsys.disabled():
        print(
            f"\n[crawl {role or 'superuser'}, {sign_in}] {len(urls)} URLs, {crawl.counts}, "
            f"{sum(crawl.counts.values())} requests, {crawl.forbidden} refusals in words"
        )
