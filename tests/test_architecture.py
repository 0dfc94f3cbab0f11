"""The layout's rules, checked on the source: imports run one way, devtools stays out of production,
the settings package is wiring only, and README's layout table names every module.

See ../README.md "Layout". Production code: api/, credentials/, institutions/,
edpotential/, requestinfo/ and staffsso/. Migrations are history and are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from credentials import tasks  # noqa: F401  (registers the tasks, as the worker's autodiscovery does)
from credentials.services import jobs
from edpotential.celery import app

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = (
    "api",
    "credentials",
    "institutions",
    "edpotential",
    "requestinfo",
    "safeadmin",
    "staffsso",
    "devtools",
)
PRODUCTION_PACKAGES = ("api", "credentials", "institutions", "edpotential", "requestinfo", "safeadmin", "staffsso")


def _modules(packages=PROJECT_PACKAGES) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(node: ast.AST, module: str) -> list[str]:
    """Project modules an import statement brings in (a name from a package counts as its submodule if one)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [
            f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
            for alias in node.names
        ]
    else:
        return []
    return [name for name in names if name.split(".")[0] in PROJECT_PACKAGES]


def _module_level_imports(path: Path, module: str) -> set[str]:
    """Imports run when the module is imported: top level, and inside top-level if/try blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If | ast.Try):
            pending.extend(ast.iter_child_nodes(node))
        found.update(_imported(node, module))
    return {name for name in found if name in MODULES and name != module}


def _all_imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.lineno, name) for node in ast.walk(tree) for name in _imported(node, module)]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle_and_passes_a_line():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_between_project_modules_at_module_level():
    graph = {module: _module_level_imports(path, module) for module, path in MODULES.items()}
    assert _cycles(graph) == []


def test_production_code_never_imports_devtools():
    offenders = [
        f"{module}:{line} imports {name}"
        for module, path in _modules(PRODUCTION_PACKAGES).items()
        for line, name in _all_imports(path, module)
        if name.split(".")[0] == "devtools"
    ]
    assert offenders == []


# Django's query internals (Query, UpdateQuery, the compilers): no deprecation
# policy covers them. Production code uses QuerySet and expressions.
DJANGO_INTERNALS = "django.db.models.sql"


def _internals_imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every import statement that brings in DJANGO_INTERNALS or a module below it, at any level."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        internal = [name for name in names if f"{name}.".startswith(f"{DJANGO_INTERNALS}.")]
        if internal:
            found.append((node.lineno, internal[0]))
    return found


def test_the_internals_finder_finds_every_spelling_of_the_import():
    source = (
        "from django.db.models.sql import UpdateQuery\n"
        "from django.db.models import sql\n"
        "def f():\n    import django.db.models.sql.compiler\n"
        "from django.db.models import Count, sql_ok\n"
        "from django.db import models\n"
    )
    assert [line for line, _ in _internals_imported(ast.parse(source))] == [1, 2, 4]


def test_production_code_never_imports_djangos_query_internals():
    offenders = [
        f"{module}:{line} imports {name}"
        for module, path in _modules(PRODUCTION_PACKAGES).items()
        for line, name in _internals_imported(ast.parse(path.read_text(), filename=str(path)))
    ]
    assert offenders == []


def test_institutions_depend_on_nothing_in_credentials():
    offenders = [
        f"{module}:{line} imports {name}"
        for module, path in _modules(("institutions",)).items()
        for line, name in _all_imports(path, module)
        if name.split(".")[0] == "credentials"
    ]
    assert offenders == []


def test_the_institution_admin_is_institutions_and_imports_nothing_from_credentials():
    # Issue 22 item 7: each app owns its rooms. credentials adds its part (the keys) through
    # institutions.admin.institution_admin_extend from its AppConfig.ready(), never the other way.
    from django.contrib import admin

    from credentials.admin.institutions import KeysExtension
    from institutions.admin import InstitutionAdmin, institution_admin_extensions
    from institutions.models import Institution

    assert "institutions.admin" in MODULES
    assert {name for _, name in _all_imports(MODULES["institutions.admin"], "institutions.admin")} == {
        "institutions.models",
        "safeadmin.lists",  # Django admin pieces that belong to no app (imports nothing of ours)
        "safeadmin.permissions",  # a 403 that names the permission it lacks (imports nothing of ours)
    }
    assert type(admin.site.get_model_admin(Institution)) is InstitutionAdmin
    assert [type(extension) for extension in institution_admin_extensions()] == [KeysExtension]


# What code outside the settings package may import from it: the Celery app
# (tasks register on it; services queue tasks by name and ask it for the
# broker's health) and the log mask (the one rule for what looks secret, which
# the API also applies to a pipeline's words). Anything else there is wiring
# that settings, urls and wsgi reach by name: request helpers live in
# requestinfo/, not in edpotential.security.
SETTINGS_PACKAGE_IMPORTABLE = {"edpotential.celery", "edpotential.logging"}


def test_outside_the_settings_package_only_the_celery_app_and_the_log_mask_are_imported_from_it():
    offenders = [
        f"{module}:{line} imports {name}"
        for module, path in MODULES.items()
        if module.split(".")[0] != "edpotential"
        for line, name in _all_imports(path, module)
        if name.split(".")[0] == "edpotential" and name not in SETTINGS_PACKAGE_IMPORTABLE
    ]
    assert offenders == []


def test_the_request_helpers_import_nothing_of_ours():
    # Every door and django-axes read the client's address through them: they must not pull an app in.
    offenders = [
        f"{module}:{line} imports {name}"
        for module, path in _modules(("requestinfo",)).items()
        for line, name in _all_imports(path, module)
    ]
    assert offenders == []


# Function-level imports of our own modules hide the dependency graph; only
# Django's hooks that must run after the apps load may have them.
# edpotential.celery: its start-up signal handlers run once Django is set up,
# but the module itself is imported while the settings load.
ALLOWED_FUNCTION_LEVEL = {
    "api.apps",
    "credentials.apps",
    "credentials.admin.apps",
    "edpotential.apps",
    "edpotential.celery",
    "staffsso.apps",
}


def test_function_level_imports_of_project_modules_only_in_app_configs():
    offenders = []
    for module, path in _modules(PRODUCTION_PACKAGES).items():
        top = _module_level_imports(path, module)
        for line, name in _all_imports(path, module):
            if name not in top and name in MODULES and module not in ALLOWED_FUNCTION_LEVEL:
                offenders.append(f"{module}:{line} imports {name} inside a function")
    assert offenders == []


@pytest.mark.parametrize("name", jobs.TASK_NAMES)
def test_every_task_a_service_queues_by_name_is_a_registered_task(name):
    assert name in app.tasks


# --------------------------------------------------------------------------
# The delivery wing: one engine, senders that only write mail
# --------------------------------------------------------------------------

# The outbox: the only code that writes a notice's delivery state.
OUTBOX_MODULES = {"credentials.services.outbox", "credentials.services.notices"}
# The only code that builds an email message (credentials/mail/messages.py renders the templates).
MAIL_MODULES = {"credentials.mail.messages"}
DELIVERY_CALLS = {
    "notice_mark_sent",
    "notice_close",
    "notice_retry_later",
    "notice_claim",
    "notices_claim",
    "notices_claim_group",
    "notices_mark_sent",
    "notices_close",
    "notices_retry_later",
}
MESSAGE_CLASSES = {"EmailMessage", "EmailMultiAlternatives"}
SENDER_MODULES = {
    "credentials.services.reminders",
    "credentials.services.owners",
    "credentials.services.digest",
    "credentials.services.links",
    "credentials.services.submission",
    "credentials.services.verification",
    "credentials.services.alerts",
    "api.webhooks",
    "staffsso.services",
}


def _called_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every call by name or attribute (`f(...)`, `x.f(...)`) in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            found.append((node.lineno, name))
    return found


def _production_modules():
    return ((m, p) for m, p in MODULES.items() if m.split(".")[0] in PRODUCTION_PACKAGES)


def _calls_outside(allowed: set[str], names: set[str]) -> list[str]:
    """Where production code outside the `allowed` modules calls one of `names`."""
    return [
        f"{module}:{line} calls {name}"
        for module, path in _production_modules()
        if module not in allowed
        for line, name in _called_names(path)
        if name in names
    ]


def test_only_the_outbox_claims_marks_sent_closes_or_retries_a_notice():
    offenders = _calls_outside(OUTBOX_MODULES, DELIVERY_CALLS)
    assert offenders == [], "senders return Send or Skip (credentials.outgoing); the outbox records the outcome"


def test_only_the_mail_module_builds_an_email_message():
    offenders = _calls_outside(MAIL_MODULES, MESSAGE_CLASSES)
    assert offenders == [], "build mail with credentials.mail.messages.build_email"


def test_the_outbox_imports_no_sender_module():
    imported = {name for module in OUTBOX_MODULES for _, name in _all_imports(MODULES[module], module)}
    assert imported & SENDER_MODULES == set(), "each app registers its senders (credentials.outgoing.sender_register)"


def test_every_notice_kind_has_a_registered_sender():
    from credentials.models import Notice
    from credentials.outgoing import registered_kinds

    assert registered_kinds() == set(Notice.Kind.values)


# What a notice records about its delivery; a reminder step keeps none of it (its notice is its one state).
DELIVERY_FIELDS = {"state", "sent_at", "failed_at", "recipients", "attempts", "last_error", "closed_at"}


def test_a_reminder_step_keeps_only_its_claim_and_reads_its_delivery_from_its_notice():
    from credentials.models import Notice, ReminderLog

    fields = {field.name for field in ReminderLog._meta.get_fields()}
    assert fields & DELIVERY_FIELDS == set(), "a step's delivery is its notice's (Notice.reminder)"
    assert {"credential", "threshold", "claimed_at", "notice"} <= fields
    assert DELIVERY_FIELDS - {"failed_at"} <= {field.name for field in Notice._meta.get_fields()}


def test_the_delivery_checks_find_what_they_forbid(tmp_path):
    """The checks above would see a sender that marks its notice sent or builds its own message."""
    sender = tmp_path / "sender.py"
    sender.write_text(
        "from django.core.mail import EmailMultiAlternatives\n"
        "def write(notice):\n"
        "    message = EmailMultiAlternatives(subject='x')\n"
        "    notices.notice_mark_sent(notice_id=notice.pk)\n"
    )
    names = {name for _, name in _called_names(sender)}
    assert {"EmailMultiAlternatives", "notice_mark_sent"} <= names


# README's "Layout" table names every module of production code (and devtools).
# A row's folder is that of the first code span in its first cell (`credentials/models.py`:
# credentials/; `credentials/services/`: credentials/services/; `Procfile.dev`: none). A module is named
# when a row of the deepest folder holding it names it: by its path (from the
# repository or from the row's folder; a path also names the folders along it),
# or by its file name with or without ".py" (a package: `name/`). Each migrations/
# package is named as a whole; its files are history.
LAYOUT_PACKAGES = (*PRODUCTION_PACKAGES, "devtools")
CODE_SPAN = re.compile(r"`([^`]+)`")


def _layout_rows(readme: str) -> list[tuple[str, list[str]]]:
    """README's Layout table as (folder, code spans of the whole row) pairs."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = line.strip().strip("|").split("|")
        if not line.startswith("|") or len(cells) < 2:
            continue
        first = CODE_SPAN.findall(cells[0])
        if not first:  # the header and the --- line
            continue
        path = first[0]
        folder = path.rstrip("/") if path.endswith("/") else path.rpartition("/")[0]
        rows.append((folder, CODE_SPAN.findall(line)))
    return rows


def _named(module_path: str, rows: list[tuple[str, list[str]]]) -> bool:
    """Whether `module_path` ("credentials/services/reminders.py", or "credentials/admin/" for a package) is named."""
    key = module_path.rstrip("/").removesuffix(".py")
    holding = [folder for folder, _ in rows if folder and (key == folder or key.startswith(folder + "/"))]
    if not holding:
        return False
    deepest = max(holding, key=len)
    if key == deepest:
        return True
    for folder, spans in rows:
        if folder != deepest:
            continue
        for span in spans:
            name = span.rstrip("/").removesuffix(".py")
            if "/" not in name:
                if name == key.rsplit("/", 1)[-1]:
                    return True
            elif any(path == key or path.startswith(key + "/") for path in (name, f"{folder}/{name}")):
                return True
    return False


def _layout_modules() -> list[str]:
    """Every module and package of LAYOUT_PACKAGES as a path ("api/views.py", "api/management/")."""
    found = set()
    for package in LAYOUT_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if "migrations" in relative.parts:
                found.add(f"{Path(*relative.parts[: relative.parts.index('migrations') + 1]).as_posix()}/")
            elif relative.name == "__init__.py":
                found.add(f"{relative.parent.as_posix()}/")
            else:
                found.add(relative.as_posix())
    return sorted(found)


def test_the_layout_rule_reads_folders_names_and_paths():
    readme = """intro
## Layout

| where | what is there |
| --- | --- |
| `app/` | `models.py`, `migrations/`, `management/commands/go.py` |
| `app/services/` | one module per area: `billing`, `other_app/tax.py` |
| `Procfile` | `notes/` |

## Next
| `app/` | `after.py` |
"""
    rows = _layout_rows(readme)
    assert [folder for folder, _ in rows] == ["app", "app/services", ""]
    for named in ("app/", "app/models.py", "app/migrations/", "app/management/", "app/management/commands/go.py"):
        assert _named(named, rows), named
    assert _named("app/services/", rows)
    assert _named("app/services/billing.py", rows)
    for unnamed in (
        "app/views.py",  # named nowhere
        "app/after.py",  # named after the table
        "app/management/commands/stop.py",  # a path names its folders, not their other files
        "app/services/models.py",  # named in app/'s row, not in app/services/'s
        "app/services/tax.py",  # that path is another app's
        "other/",  # no row holds it
        "notes/",  # a root row names no production module
    ):
        assert not _named(unnamed, rows), unnamed


def test_the_layout_table_in_the_readme_names_every_module():
    rows = _layout_rows((ROOT / "README.md").read_text())
    assert [path for path in _layout_modules() if not _named(path, rows)] == []


def test_every_file_the_layout_table_names_exists():
    missing = [
        span
        for folder, spans in _layout_rows((ROOT / "README.md").read_text())
        for span in spans
        if span.endswith((".py", "/"))
        and not any((ROOT / base / span).exists() for base in ({"", folder} if folder else {""}))
    ]
    assert missing == []


# --------------------------------------------------------------------------
# One key lifecycle: every status change of a key goes through services/keys.py
# --------------------------------------------------------------------------

LIFECYCLE_MODULE = "credentials.services.keys"


def _key_status_writes(path: Path) -> list[tuple[int, str]]:
    """Writes of a key's status: `status=CD2Credential.Status.X` in update(), `x.status = CD2Credential.Status.X`."""

    def is_key_status(node: ast.AST) -> bool:
        return "CD2Credential.Status" in ast.unparse(node)

    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            for keyword in node.keywords:
                if keyword.arg == "status" and is_key_status(keyword.value):
                    found.append((node.lineno, ast.unparse(node)[:80]))
        if isinstance(node, ast.Assign) and is_key_status(node.value):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr == "status":
                    found.append((node.lineno, ast.unparse(node)[:80]))
    return found


def test_only_the_lifecycle_service_writes_a_keys_status():
    offenders = [
        f"{module}:{line} {code}"
        for module, path in _production_modules()
        if module != LIFECYCLE_MODULE
        for line, code in _key_status_writes(path)
    ]
    assert offenders == [], "change a key's status through credentials.services.keys (it refreshes the key summary)"


def test_the_status_check_finds_a_direct_write(tmp_path):
    source = tmp_path / "elsewhere.py"
    source.write_text(
        "CD2Credential.objects.filter(pk=1).update(status=CD2Credential.Status.SUPERSEDED)\n"
        "key.status = CD2Credential.Status.REVOKED\n"
        "Institution.objects.filter(pk=1).update(status=Institution.Status.PAUSED)\n"
    )
    assert sorted(line for line, _ in _key_status_writes(source)) == [1, 2]
