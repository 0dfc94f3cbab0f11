"""The institution admin: the staff list and page of institutions and their contacts.

Institutions own this admin; an app that knows more about an institution
(credentials: its keys) adds what it knows through one extension point,
`InstitutionAdminExtension`, registered from that app's `AppConfig.ready()`
with `institution_admin_extend`. Each hook takes what the admin has so far and
returns what to show. The declared parts (list_display, list_filter, inlines,
fieldsets, readonly_fields) are properties of the admin, the admin's own
(`own_*`) then each extension's, so Django's system checks and credentials'
see all of them. This module imports nothing of the apps that extend
it (tests/test_architecture.py checks that institutions imports nothing from
credentials). Contributed columns, read-only fields and actions are callables,
as Django's `list_display`, `readonly_fields` and `actions` accept them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.views.main import ORDER_VAR
from django.core.paginator import Paginator
from django.db import models, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, reverse
from django.utils.decorators import method_decorator
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.views.decorators.http import require_POST
from import_export.admin import ImportMixin
from import_export.forms import ConfirmImportForm
from import_export.signals import post_import

from institutions.models import Contact, Institution
from safeadmin.lists import SafeChangeList
from safeadmin.permissions import missing_permission

# --------------------------------------------------------------------------
# The extension point
# --------------------------------------------------------------------------


class InstitutionAdminExtension:
    """What another app adds to the institution admin. Every hook's default adds nothing.

    Subclass it, override the hooks you need and register one instance from
    your AppConfig.ready() with `institution_admin_extend`. Hooks are asked on
    every request, in the order the extensions were registered.
    """

    # Stylesheets and scripts the contributed columns and fields need.
    media = forms.Media()

    # What the admin declares: no request, so that Django's system checks and credentials' (no sorting,
    # searching or filtering by an encrypted field) see the contributed parts as they see the admin's own.

    def list_display(self, list_display: tuple) -> tuple:
        """The list's columns: names of the admin's own, or callables taking an institution (with @admin.display)."""
        return list_display

    def list_filter(self, list_filter: tuple) -> tuple:
        return list_filter

    def inlines(self, inlines: tuple) -> tuple:
        return inlines

    def fieldsets(self, fieldsets: tuple) -> tuple:
        """The page's sections; a contributed read-only field is a callable, listed by `readonly_fields` too."""
        return fieldsets

    def readonly_fields(self, readonly_fields: tuple) -> tuple:
        return readonly_fields

    # What depends on the request.

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        """The list's and the page's institutions, annotated with what the columns read (not used for counting)."""
        return queryset

    def actions(self, request: HttpRequest) -> Sequence[Callable]:
        """The list's actions this request's user may run: functions (model_admin, request, queryset), @admin.action."""
        return ()

    def urls(self, model_admin: InstitutionAdmin) -> list[URLPattern]:
        """Extra pages under /admin/institutions/institution/ (named `institutions_institution_...`)."""
        return []

    def change_context(self, request: HttpRequest, object_id: str) -> dict[str, Any]:
        """Template context for the institution's page (admin/institutions/institution/change_form.html)."""
        return {}

    def import_resources(self) -> tuple[type, ...]:
        """django-import-export resources for the list's bulk import; none means no Import button."""
        return ()

    def import_formats(self) -> tuple[type, ...]:
        """The file formats the import reads (django-import-export format classes); none: the library's."""
        return ()

    def import_refusal(self, error: Exception) -> str | None:
        """The words for an upload one of this extension's readers refused (`error`), or None if not its own."""
        return None

    def import_context(self, request: HttpRequest) -> dict[str, Any]:
        """Template context for the import page (its columns and their formats, template downloads ...)."""
        return {}


_extensions: list[InstitutionAdminExtension] = []


def institution_admin_extend(extension: InstitutionAdminExtension) -> None:
    """Add an app's part of the institution admin, from its AppConfig.ready() (once per class: again is a no-op)."""
    if not any(type(existing) is type(extension) for existing in _extensions):
        _extensions.append(extension)


def institution_admin_extensions() -> tuple[InstitutionAdminExtension, ...]:
    return tuple(_extensions)


def insert_after(items: tuple, anchor: Any, *new: Any) -> tuple:
    """`items` with `new` after `anchor` (an item, or the first element of a tuple item such as a field's filter)."""
    for index, item in enumerate(items):
        if item == anchor or (isinstance(item, tuple) and item[0] == anchor):
            return (*items[: index + 1], *new, *items[index + 1 :])
    raise ValueError(f"{anchor!r} is not in {items!r}")


class ImportConfirmForm(ConfirmImportForm):
    """The import's confirm step, with the explicit choice a change to existing institutions needs.

    A resource whose Result has `choices` (words for each change to existing
    institutions that needs the choice) and `changes_digest` (a fingerprint
    of the preview's changes) gets both back as `confirm_changes` and
    `changes_digest` when the import is confirmed, and refuses there: the
    page cannot be skipped by posting the form without the box.
    """

    changes_digest = forms.CharField(widget=forms.HiddenInput(), required=False)
    confirm_changes = forms.BooleanField(required=False, label="I have checked these changes to existing institutions")


# --------------------------------------------------------------------------
# List filters on the institution's own columns
# --------------------------------------------------------------------------


class ServedFilter(admin.SimpleListFilter):
    """Institutions we serve (active or onboarding): what reminders and the staff digest cover."""

    title = "served"
    parameter_name = "served"

    def lookups(self, request, model_admin):
        return (("1", "Served (active or onboarding)"),)

    def queryset(self, request, queryset):
        if self.value() == "1":
            return queryset.filter(status__in=Institution.SERVED_STATUSES)
        return queryset


class AccountOwnerFilter(admin.RelatedFieldListFilter):
    """Only the users who own at least one institution.

    Django's RelatedOnlyFieldListFilter finds them with SELECT DISTINCT over
    the list's whole (annotated) queryset; this asks the user table instead,
    one EXISTS per user on the indexed account_owner column.
    """

    def field_choices(self, field, request, model_admin):
        owns = Institution.objects.filter(account_owner=OuterRef("pk"))
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(include_blank=False, limit_choices_to=Q(Exists(owns)), ordering=ordering)


class MineFilter(admin.SimpleListFilter):
    title = "my institutions"
    parameter_name = "mine"

    def lookups(self, request, model_admin):
        return (("1", "Where I am the account owner"),)

    def queryset(self, request, queryset):
        if self.value() == "1":
            return queryset.filter(account_owner=request.user)
        return queryset


class LabelledRowsFormSet(BaseInlineFormSet):
    """A table's fields have only their column heading, which screen readers do not
    take for a label (WCAG 1.3.1, 4.1.2): each field of a row, "Delete" too, names itself."""

    def add_fields(self, form, index):
        super().add_fields(form, index)
        for field in form.fields.values():
            widget = getattr(field.widget, "widget", field.widget)  # inside a related-field wrapper
            if not widget.is_hidden:
                widget.attrs.setdefault("aria-label", str(field.label))


class ContactInline(admin.TabularInline):
    model = Contact
    formset = LabelledRowsFormSet
    extra = 0
    fields = ("name", "email", "role", "receives_reminders")


# --------------------------------------------------------------------------
# The list: counted and ordered on the institution's own columns
# --------------------------------------------------------------------------


class CountQuerysetPaginator(Paginator):
    """Counts `object_list.count_queryset` when the list set one (see InstitutionChangeList)."""

    @cached_property
    def count(self) -> int:
        count_queryset = getattr(self.object_list, "count_queryset", None)
        if count_queryset is None:
            return super().count
        return count_queryset.count()


class InstitutionChangeList(SafeChangeList):
    counting = False

    def get_filters(self, request):
        # Built once: count_queryset applies the same filters to the plain
        # queryset, and building them again would repeat their choice queries.
        if not hasattr(self, "_filters"):
            self._filters = super().get_filters(request)
        return self._filters

    def count_queryset(self, request):
        """The filtered list without the extensions' annotations and their joins, or None when it needs them.

        An institution has at most one active key (a partial unique
        constraint), so the LEFT JOIN to it never changes the count, and
        every filter reads the institution's own columns (the stored key
        summary), so only lookups typed into the URL might need the join.
        """
        _, _, remaining_lookup_params, _, _ = self.get_filters(request)
        if remaining_lookup_params:
            return None
        annotated = self.root_queryset
        self.root_queryset = self.model_admin.plain_queryset(request)
        self.counting = True
        try:
            return self.get_queryset(request).order_by()
        finally:
            self.root_queryset = annotated
            self.counting = False

    def get_ordering(self, request, queryset):
        # The count's plain queryset has none of the annotations that the
        # contributed columns sort by, and a count needs no order.
        if self.counting:
            return []
        return super().get_ordering(request, queryset)

    def get_results(self, request):
        count_queryset = self.count_queryset(request)
        if count_queryset is not None:
            self.queryset = self.queryset.all()
            self.queryset.count_queryset = count_queryset
        super().get_results(request)
        if isinstance(self.result_list, models.QuerySet) and not self.result_list.query.is_sliced:
            # Everything fits on one page, so Django asks for the rows without a LIMIT. Given one (it
            # changes nothing: there are at most that many), PostgreSQL walks the index in the list's
            # order and stops; without it, a filter whose rows it over-estimates (never checked: none
            # at 100,000) becomes a scan and sort of every institution.
            limit = self.list_max_show_all if self.show_all else self.list_per_page
            self.result_list = self.result_list[: max(limit, self.result_count)]

    def get_ordering_field_columns(self):
        # Without ?o= the list is in get_ordering's order (soonest expiry first); mark the first
        # column sorted by key_expires_on, not the Meta ordering's "name" that Django would guess.
        if ORDER_VAR not in self.params:
            for index, field_name in enumerate(self.list_display):
                if self.get_ordering_field(field_name) == InstitutionAdmin.LIST_ORDER_FIELD:
                    return {index: "asc"}
        return super().get_ordering_field_columns()


# --------------------------------------------------------------------------
# Institution
# --------------------------------------------------------------------------


@admin.register(Institution)
class InstitutionAdmin(ImportMixin, admin.ModelAdmin):
    # Bulk onboarding: upload, preview every row, confirm (the resources come from the extensions).
    own_list_display = ("name", "canvas_domain", "account_owner")
    list_select_related = ("account_owner",)
    own_list_filter = (MineFilter, ServedFilter, "status", ("account_owner", AccountOwnerFilter))
    search_fields = ("name", "slug", "canvas_domain", "contacts__email")
    search_help_text = "Search by name, slug, Canvas domain or a contact's email."
    list_per_page = 50
    # Django renders this column through a form widget's template, once per row: a third of the
    # list's rendering time at 50 rows (bench/RESULTS.md). The same markup, written directly.
    action_checkbox_html = (
        '<input type="checkbox" name="{}" value="{}" class="action-select" '
        'aria-label="Select this object for an action - {}">'
    )
    # No second COUNT over every institution for "(N total)"; the filtered count stays.
    show_full_result_count = False
    paginator = CountQuerysetPaginator
    empty_value_display = "—"
    prepopulated_fields = {"slug": ("name",)}
    own_inlines = (ContactInline,)
    own_readonly_fields = ("created_at", "updated_at")
    own_fieldsets = (
        (
            None,
            {"fields": ("name", "slug", "canvas_domain", "status", "timezone", "language", "account_owner", "notes")},
        ),
        ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )
    # The page's template (the key buttons) is Django's default name for it:
    # templates/admin/institutions/institution/change_form.html.

    # The list's order: soonest expiry of the active key first (the stored
    # summary, which the institution_key_expiry index serves), no key last.
    LIST_ORDER_FIELD = "key_expires_on"

    # -- the declared parts: the admin's own (own_*), then each extension's -----

    def _extended(self, part: str):
        value = getattr(self, f"own_{part}")
        for extension in institution_admin_extensions():
            value = getattr(extension, part)(value)
        return value

    @property
    def list_display(self):
        return self._extended("list_display")

    @property
    def list_filter(self):
        return self._extended("list_filter")

    @property
    def inlines(self):
        return self._extended("inlines")

    @property
    def fieldsets(self):
        return self._extended("fieldsets")

    @property
    def readonly_fields(self):
        return self._extended("readonly_fields")

    @property
    def media(self):
        media = super().media
        for extension in institution_admin_extensions():
            media += extension.media
        return media

    def get_ordering(self, request):
        # Only on this list. Other admins' list filters order institutions
        # with this method too, on their own pages.
        # (Not in `ordering`: the system check would read the F() as a field.)
        match = request.resolver_match
        if match and match.url_name == f"{self.opts.app_label}_{self.opts.model_name}_changelist":
            return (F(self.LIST_ORDER_FIELD).asc(nulls_last=True), "name")
        return ("name",)

    def get_changelist(self, request, **kwargs):
        return InstitutionChangeList

    def plain_queryset(self, request):
        """Institutions as the list would show them, without the extensions' annotations (for counting)."""
        return super().get_queryset(request)

    def get_queryset(self, request):
        queryset = self.plain_queryset(request)
        for extension in institution_admin_extensions():
            queryset = extension.queryset(request, queryset)
        return queryset

    def action_checkbox(self, obj: Institution) -> str:
        return format_html(self.action_checkbox_html, helpers.ACTION_CHECKBOX_NAME, obj.pk, str(obj))

    # -- what the extensions add for a request --------------------------------

    def get_actions(self, request):
        actions = super().get_actions(request)
        if self.actions is None or IS_POPUP_VAR in request.GET:
            return actions
        for extension in institution_admin_extensions():
            for action in extension.actions(request):
                name = action.__name__
                actions[name] = (action, name, getattr(action, "short_description", name))
        return actions

    def get_urls(self):
        own = [url for extension in institution_admin_extensions() for url in extension.urls(self)]
        return [*own, *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        for extension in institution_admin_extensions():
            extra_context.update(extension.change_context(request, object_id))
        return super().change_view(request, object_id, form_url, extra_context)

    def get_import_resource_classes(self, request):
        return [resource for extension in institution_admin_extensions() for resource in extension.import_resources()]

    def get_import_formats(self):
        formats = [fmt for extension in institution_admin_extensions() for fmt in extension.import_formats()]
        return formats or super().get_import_formats()

    def _import_refusal(self, error: Exception) -> str | None:
        for extension in institution_admin_extensions():
            words = extension.import_refusal(error)
            if words:
                return words
        return None

    def add_data_read_fail_error_to_form(self, form, e):
        # A reader that refused the file says why in words: shown as written, in place of the
        # library's "'ValueError' encountered while trying to read file".
        words = self._import_refusal(e)
        if words:
            form.add_error("import_file", words)
        else:
            super().add_data_read_fail_error_to_form(form, e)

    # -- the import: every error at once, every change shown, an explicit choice where it matters --------

    import_template_name = "admin/institutions/institution/import.html"
    confirm_form_class = ImportConfirmForm

    def _import_page_context(self, request) -> dict[str, Any]:
        context: dict[str, Any] = {}
        for extension in institution_admin_extensions():
            context.update(extension.import_context(request))
        return context

    def import_action(self, request, **kwargs):
        response = super().import_action(request, **kwargs)
        if not isinstance(response, TemplateResponse):
            return response
        context = response.context_data
        context.update(self._import_page_context(request))
        result, confirm_form = context.get("result"), context.get("confirm_form")
        if confirm_form is not None:
            if not getattr(result, "changing", True):
                # Every row matches what is stored: nothing to confirm, nothing to audit.
                context["confirm_form"] = None
            else:
                confirm_form.initial["changes_digest"] = getattr(result, "changes_digest", "")
        return response

    def get_import_data_kwargs(self, **kwargs):
        form = kwargs.get("form")
        kwargs = super().get_import_data_kwargs(**kwargs)
        if isinstance(form, ImportConfirmForm) and form.is_bound:
            kwargs["confirm_changes"] = form.cleaned_data.get("confirm_changes", False)
            kwargs["changes_digest"] = form.cleaned_data.get("changes_digest") or ""
        return kwargs

    @method_decorator(require_POST)
    def process_import(self, request, **kwargs):
        """The confirmed import: one transaction, its log entries included; a refusal shows the preview again.

        django-import-export's own redirects to the list whatever the result
        (it trusts the preview); here a confirmed run the resource refuses
        (the explicit choice missing, the institutions changed since the
        preview) writes nothing and shows the page again, the upload kept.
        """
        if not self.has_import_permission(request):
            raise missing_permission("institutions.add_institution", doing="Importing institutions")
        confirm_form = self.create_confirm_form(request)
        if not confirm_form.is_valid():
            return super().process_import(request, **kwargs)
        input_format = self.get_import_formats()[int(confirm_form.cleaned_data["format"])](encoding=self.from_encoding)
        tmp_storage = self.get_tmp_storage_class()(
            name=confirm_form.cleaned_data["import_file_name"],
            encoding=None if input_format.is_binary() else self.from_encoding,
            read_mode=input_format.get_read_mode(),
            **self.get_tmp_storage_class_kwargs(),
        )
        try:
            dataset = input_format.create_dataset(tmp_storage.read())
        except Exception as error:
            # The confirmed import reads the stored upload again: a refusal there goes back to the upload form.
            words = self._import_refusal(error)
            if not words:
                raise
            messages.error(request, words)
            opts = self.model._meta
            return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_import"))
        with transaction.atomic():
            result = self.process_dataset(dataset, confirm_form, request, **kwargs)
            if not (result.has_errors() or result.has_validation_errors()):
                self.generate_log_entries(result, request)
        if result.has_errors() or result.has_validation_errors():
            return self._import_refused(request, result, confirm_form)
        tmp_storage.remove()
        self.add_success_message(result, request)
        post_import.send(sender=None, model=self.model)
        opts = self.model._meta
        return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))

    def _import_refused(self, request, result, confirm_form) -> TemplateResponse:
        again = self.get_confirm_form_class(request)(
            initial={
                **{name: confirm_form.cleaned_data.get(name) for name in ("import_file_name", "format", "resource")},
                "original_file_name": confirm_form.cleaned_data.get("original_file_name"),
                "changes_digest": getattr(result, "changes_digest", ""),
            }
        )
        context = {
            **self.admin_site.each_context(request),
            **self._import_page_context(request),
            "title": "Import",
            "opts": self.model._meta,
            "result": result,
            "confirm_form": again if getattr(result, "changing", True) else None,
            "refusal": getattr(result, "refusal", ""),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, [self.import_template_name], context)

    def has_import_permission(self, request) -> bool:
        return bool(self.get_import_resource_classes(request)) and super().has_import_permission(request)
