"""A refusal in words: every 403 says which permission is missing and who has it.

`missing_permission("credentials.reveal_secret")` is the PermissionDenied a
door raises; its message names the permission as Django's table calls it
("Can reveal a key's Secret") and the groups that hold it. A bare
PermissionDenied (Django's admin raises them for a model a role may not see)
is explained by `refusal_for(request)` from the admin URL it answered.
Imports nothing of ours.
"""

from __future__ import annotations

from django.apps import apps
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.urls import Resolver404, resolve

# Django admin's URL names end in these; what each needs.
_ADMIN_ACTIONS = {"changelist": "view", "change": "view", "history": "view", "add": "add", "delete": "delete"}


def permission_words(perm: str) -> str:
    """'credentials.reveal_secret' -> 'the permission “Can reveal ...” (given to: Data engineer)'."""
    app_label, _, codename = perm.partition(".")
    permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
    if permission is None:
        return "a permission your account does not have"
    groups = sorted(Group.objects.filter(permissions=permission).values_list("name", flat=True))
    holders = f" (given to: {', '.join(groups)})" if groups else " (given to superusers only)"
    return f"the permission “{permission.name}”{holders}"


def missing_permission(*perms: str, doing: str = "") -> PermissionDenied:
    """The PermissionDenied to raise when a user lacks `perms` (all needed): its message says which."""
    wanted = " and ".join(permission_words(perm) for perm in perms) or "a permission your account does not have"
    return PermissionDenied(f"{doing or 'This page'} needs {wanted}.")


def _names_model(request) -> bool:
    try:
        apps.get_registered_model(request.GET.get("app_label", ""), request.GET.get("model_name", ""))
    except LookupError:
        return False
    return True


def refusal_for(request, exception: BaseException | None) -> str:
    """The words of a 403: the exception's own, else the admin model permission its URL needs."""
    said = str(exception or "").strip()
    if said:
        return said
    try:
        match = resolve(request.path_info)
    except Resolver404:
        match = None
    name = match.url_name or "" if match else ""
    if name == "autocomplete":
        # Django's search-as-you-type refuses a request that names no field it serves, or a model the user
        # may not see.
        if _names_model(request):
            opts = apps.get_registered_model(request.GET["app_label"], request.GET["model_name"])._meta
            perm = f"{opts.app_label}.view_{opts.model_name}"
            if not request.user.has_perm(perm):
                return str(missing_permission(perm, doing="This search"))
        return (
            "This address answers only the admin's own search-as-you-type boxes, and this request named no "
            "field they serve: there is no permission to grant. Use the search box on the page instead."
        )
    for model in apps.get_models():
        prefix = f"{model._meta.app_label}_{model._meta.model_name}_"
        if name.startswith(prefix):
            action = _ADMIN_ACTIONS.get(name[len(prefix) :], "change")
            opts = model._meta
            what = f"{'Adding' if action == 'add' else 'This page of'} {opts.verbose_name_plural}"
            return str(missing_permission(f"{opts.app_label}.{action}_{opts.model_name}", doing=what))
    return "Your account does not have the permission this page needs."
