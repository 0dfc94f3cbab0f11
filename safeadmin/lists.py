"""Admin lists that answer a filter value they cannot hold with the whole list and a message, never a 500.

Django's admin lets a URL filter any of a model's own fields with any lookup
(`?created_at__year=10000`), and several values only fail once the query is
compiled, while the page renders: a year outside 1-9999 for a year lookup, a
date drill-down to 9999 (whose end is year 10000), a number too large for a
C integer. `SafeChangeList` compiles the filtered query while the list is
built, so such a value is an IncorrectLookupParameters like any other wrong
lookup: Django then redirects to the unfiltered list (`?e=1`), where the
message below says what happened. `SafeFilterValuesMixin` gives a ModelAdmin
this change list.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import EmptyResultSet, ValidationError

# A value too large or too small for what SQL or Python's dates can hold.
OUT_OF_RANGE = (ValueError, OverflowError, ValidationError)
MESSAGE = "A filter value in the address is outside what this list can show, so it was ignored: here is the whole list."


class SafeChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        try:
            queryset = super().get_queryset(request, exclude_parameters)
            try:
                # Compile now (no query runs): a bound SQL cannot hold fails here, not in the template.
                queryset.query.sql_with_params()
            except EmptyResultSet:
                pass  # a filter that matches nothing is a fine filter
        except IncorrectLookupParameters:
            self._tell(request)
            raise
        except OUT_OF_RANGE as exc:
            self._tell(request)
            raise IncorrectLookupParameters(exc) from exc
        return queryset

    def _tell(self, request) -> None:
        # get_queryset runs more than once per list (facets, counts): one message.
        if not getattr(request, "_filter_value_refused", False):
            request._filter_value_refused = True
            messages.warning(request, MESSAGE)


class SafeFilterValuesMixin:
    """A ModelAdmin whose list refuses filter values it cannot hold (SafeChangeList)."""

    def get_changelist(self, request, **kwargs):
        return SafeChangeList
