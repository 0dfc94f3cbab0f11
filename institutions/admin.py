from __future__ import annotations

from django.contrib import admin

from institutions.models import Contact, Institution


class ContactInline(admin.TabularInline):
    model = Contact
    extra = 0


@admin.register(Institution)
class InstitutionAdmin(admin.ModelAdmin):
    list_display = ("name", "canvas_domain", "status", "account_owner")
    list_filter = ("status",)
    search_fields = ("name", "slug", "canvas_domain", "contacts__email")
    prepopulated_fields = {"slug": ("name",)}
    inlines = (ContactInline,)
