"""django-axes' lockout list, with its one action working.

axes 8.3.1's "Clean up expired attempts" reads the attempt time its
middleware sets on a sign-in request; from the admin there is none and the
action answered 500 (found by tests/security/test_admin_crawl.py).
Registered in place of axes' admin when StaffAdminConfig.ready imports this
module, after autodiscovery (importing axes.admin from the site module would
be an import circle: it registers on the site).
"""

from __future__ import annotations

from axes.admin import AccessAttemptAdmin
from axes.models import AccessAttempt
from django.contrib import admin
from django.utils import timezone


class StaffAccessAttemptAdmin(AccessAttemptAdmin):
    @admin.action(description="Clean up expired attempts")
    def cleanup_expired_attempts(self, request, queryset):
        # "Now" is the moment against which axes decides what has expired.
        request.axes_attempt_time = timezone.now()
        return super().cleanup_expired_attempts(request, queryset)


admin.site.unregister(AccessAttempt)
admin.site.register(AccessAttempt, StaffAccessAttemptAdmin)
