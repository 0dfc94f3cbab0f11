"""Django's date formats for the admin's own display, the same as credentials/formatting.py writes.

"3 Dec 2026", "3 Dec 2026, 05:25", "Dec 2026", "05:25" (not en-gb's "5:25 a.m.").
"""

DATE_FORMAT = "j M Y"
DATETIME_FORMAT = "j M Y, H:i"
TIME_FORMAT = "H:i"
YEAR_MONTH_FORMAT = "M Y"
MONTH_DAY_FORMAT = "j M"
SHORT_DATE_FORMAT = "j M Y"
SHORT_DATETIME_FORMAT = "j M Y, H:i"
