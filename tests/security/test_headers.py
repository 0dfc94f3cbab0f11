"""Every page carries the security headers, with a Content-Security-Policy that allows nothing inline."""

from __future__ import annotations

import pytest
from django.urls import reverse


def csp_directives(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in header.split(";")) if d}


@pytest.mark.parametrize("url", ["/admin/login/", "/admin/", "/no-such-page/"])
def test_every_page_has_the_security_headers(client, db, url):
    response = client.get(url)
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    policy = csp_directives(response)
    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]
    assert "'unsafe-eval'" not in response["Content-Security-Policy"]


def test_admin_pages_have_no_inline_script_or_style_the_policy_does_not_allow(admin_client):
    # Django's admin has one inline <style> (change lists without actions),
    # allowed by its hash; anything else inline would be blocked by browsers.
    import base64
    import hashlib
    import re

    from django.contrib import admin

    allowed_hashes = set(csp_directives(admin_client.get("/admin/"))["style-src"])
    urls = ["/admin/", reverse("admin:password_change")]
    for model in admin.site._registry:
        opts = model._meta
        urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
    for url in urls:
        response = admin_client.get(url, follow=True)
        assert response.status_code == 200, url
        html = response.content.decode()
        for body in re.findall(r"<style[^>]*>(.*?)</style>", html, re.S):
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in allowed_hashes, f"inline style on {url} not allowed by CSP"
        for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S):
            inline_code = body.strip() and "application/json" not in attrs and "nonce=" not in attrs
            assert not inline_code, f"inline script on {url} would be blocked by CSP"
        assert not re.search(r"\son[a-z]+\s*=", html), f"inline event handler on {url}"
