"""The staff admin: the site (site.py), the keys in the institution admin (institutions.py), the key pages
(keys.py), the extra pages behind their buttons (pages.py) and the dashboard (dashboard.py).

The model admins are registered by StaffAdminConfig.ready (apps.py here),
not from this package's import: Django builds the default site lazily by
importing credentials.admin.site, which imports this package first, and a
registration made during that import would land on a site Django throws away.
"""
