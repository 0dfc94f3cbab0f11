"""django-axes' lockout list, with its one action working; its sign-in logs refusing a date no list can hold.

axes 8.3.1's "Clean up expired attempts" reads the attempt time its
middleware sets on a sign-in request; from the admin there is none and the
action answered 500 (found by tests/security/test_admin_crawl.py).
Registered in place of axes' admin when StaffAdminConfig.ready imports this
module, after autodiscovery (importing axes.admin from the site module would
be an import circle: it registers on the site). All three lists answer a
filter value they cannot hold (`?attempt_time__year=9999`) with the whole
list and a message instead of a 500 (safeadmin/lists.py).
"""

from __future__ import annotations

from axes.admin import AccessAttemptAdmin, AccessFailureLogAdmin, AccessLogAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.utils import timezone

from safeadmin.lists import SafeFilterValuesMixin


class StaffAccessAttemptAdmin(SafeFilterValuesMixin, AccessAttemptAdmin):
    @admin.action(description="Clean up expired attempts")
    def cleanup_expired_attempts(self, request, queryset):
        # "Now" is the moment against which axes decides what has expired.
        request.axes_attempt_time = timezone.now()
        return super().cleanup_expired_attempts(request, queryset)


class StaffAccessLogAdmin(SafeFilterValuesMixin, AccessLogAdmin):
    pass


class StaffAccessFailureLogAdmin(SafeFilterValuesMixin, AccessFailureLogAdmin):
    pass


for model, model_admin in (
    (AccessAttempt, StaffAccessAttemptAdmin),
    (AccessLog, StaffAccessLogAdmin),
    (AccessFailureLog, StaffAccessFailureLogAdmin),
):
    admin.site.unregister(model)
    admin.site.register(model, model_admin)
