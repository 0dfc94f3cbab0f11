"""The bulk import's upload in the admin: only the bounded CSV and XLSX readers, and their refusal in words.

django-import-export offers every format tablib can read (JSON, YAML, HTML,
TSV ...) and reads them whole; the import takes CSV or XLSX, read within the
limits of credentials/services/spreadsheets.py. Its refusal (UploadRefused)
is shown on the upload form as it is written, in place of the library's
"'ValueError' encountered while trying to read file".
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponseRedirect
from django.urls import reverse
from import_export.admin import ImportMixin

from credentials.services.spreadsheets import BoundedCSV, BoundedXLSX, UploadRefused


class BoundedImportMixin(ImportMixin):
    formats = (BoundedCSV, BoundedXLSX)

    def add_data_read_fail_error_to_form(self, form, e):
        if isinstance(e, UploadRefused):
            form.add_error("import_file", str(e))
        else:
            super().add_data_read_fail_error_to_form(form, e)

    def process_import(self, request, **kwargs):
        # The confirmed import reads the stored upload again: a refusal there goes back to the upload form.
        try:
            return super().process_import(request, **kwargs)
        except UploadRefused as refused:
            messages.error(request, str(refused))
            opts = self.model._meta
            return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_import"))
