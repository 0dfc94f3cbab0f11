"""What a machine does not see: a key handed over by keyboard alone, focus where it should be, a focus ring
of 3:1 on every control, the Secret's show/hide announced, no motion when asked, and the page at 400% zoom.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from django.urls import reverse

from credentials.models import CD2Credential
from credentials.services.links import submission_link_create
from devtools import fake_gateway

pytestmark = pytest.mark.e2e

# The interactive elements a keyboard reaches (what Tab stops on).
CONTROLS = "a[href], button, input:not([type=hidden]), select, textarea, [tabindex]:not([tabindex='-1'])"


@pytest.fixture
def link_url(live_server, institution, cd2_gateway, isolated_cache):
    def make() -> str:
        token = submission_link_create(institution=institution).token
        return live_server.url + reverse("credentials:submit", kwargs={"token": token})

    return make


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == []


def focused(page) -> str:
    """The focused element, as `tag#id` (or `tag.class` / its text when it has no id)."""
    return page.evaluate(
        """() => { const e = document.activeElement; if (!e || e === document.body) return 'body';
        return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '[' + e.textContent.trim().slice(0, 30) + ']'); }"""
    )


def tab_to(page, target: str, *, most: int = 25) -> list[str]:
    """Press Tab until `target` (`tag#id`) has focus; returns the stops on the way."""
    stops = []
    for _ in range(most):
        page.keyboard.press("Tab")
        stops.append(focused(page))
        if stops[-1] == target:
            return stops
    raise AssertionError(f"{target} never got focus; Tab went through {stops}")


def test_a_key_handed_over_by_keyboard_alone(page, link_url, institution):
    page.goto(link_url())
    stops = tab_to(page, "input#id_client_id")
    assert stops[0] == "a[Skip to the content]"  # the first Tab offers the skip link
    page.keyboard.type(fake_gateway.DEMO_REJECTED_CLIENT_ID)
    assert tab_to(page, "input#id_secret", most=1)
    page.keyboard.type(fake_gateway.DEMO_REJECTED_SECRET)

    # Show and hide the Secret with Space; each change is announced in the status line.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Show the Secret"
    page.keyboard.press("Space")
    assert page.locator("#id_secret").get_attribute("type") == "text"
    assert page.get_by_role("button", name="Hide the Secret").is_visible()
    assert page.locator("#secret-status").inner_text() == "The Secret is shown."
    assert page.locator("#secret-status").get_attribute("role") == "status"
    page.keyboard.press("Space")
    assert page.locator("#id_secret").get_attribute("type") == "password"
    assert page.locator("#secret-status").inner_text() == "The Secret is hidden."

    # The expiry: the picker's options with the arrow keys (a closed select's own keys), the date follows.
    tab_to(page, "select#id_expiry_period", most=1)
    for _ in range(5):  # Choose…, 1 day, 1 week, 1 month, 6 months, 1 year
        page.keyboard.press("ArrowDown")
    assert page.locator("#id_expiry_period").input_value() == "1y"
    assert page.locator("#id_expires_on").input_value() != ""
    tab_to(page, "input#id_submitted_by")
    page.keyboard.type("Ada Admin")
    tab_to(page, "input#id_submitted_by_email", most=1)
    page.keyboard.type("ada@northfield.example.edu")
    tab_to(page, "button[Check and send the key]", most=1)
    with page.expect_navigation():
        page.keyboard.press("Enter")

    # Refused: focus is on the error summary, whose link leads to the field to fix.
    assert focused(page) == "div#problems"
    assert "Instructure did not accept this key" in page.locator("#problems").inner_text()
    stops = tab_to(page, "a[Secret]", most=3)
    page.keyboard.press("Enter")
    assert focused(page) == "input#id_secret"
    page.keyboard.type(fake_gateway.DEMO_ACCEPTED_SECRET)
    page.keyboard.press("Shift+Tab")
    assert focused(page) == "input#id_client_id"
    page.keyboard.press("Control+A")
    page.keyboard.type(fake_gateway.DEMO_ACCEPTED_CLIENT_ID)
    tab_to(page, "button[Check and send the key]")
    with page.expect_navigation():
        page.keyboard.press("Space")

    # Accepted: focus is on the result, which says so.
    assert urlsplit(page.url).path == "/k/received/", page.url
    # autofocus takes effect at the page's next rendering step, not at once on load.
    page.wait_for_function("document.activeElement && document.activeElement.id === 'result'", timeout=5000)
    assert focused(page) == "h1#result"
    assert "the key works" in page.locator("#result").inner_text()
    assert CD2Credential.objects.get(institution=institution).status == CD2Credential.Status.ACTIVE


# --- The focus ring ---------------------------------------------------------------------------


def luminance(rgb: tuple[float, float, float]) -> float:
    def channel(c: float) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = map(channel, rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(one: str, two: str) -> float:
    """WCAG's contrast ratio of two CSS colours as getComputedStyle writes them (rgb()/rgba())."""
    a, b = (luminance(tuple(float(n) for n in re.findall(r"[\d.]+", c)[:3])) for c in (one, two))
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


# The focused element's outline, and the colour just outside it on the left and on top (what
# the ring is seen against): the first opaque background under those points.
RING = """() => {
  const e = document.activeElement, s = getComputedStyle(e), r = e.getBoundingClientRect();
  const out = parseFloat(s.outlineOffset) + parseFloat(s.outlineWidth) + 2;
  function behind(x, y) {
    for (let el of document.elementsFromPoint(Math.max(x, 0), Math.max(y, 0))) {
      if (el === e || e.contains(el)) continue;
      for (; el; el = el.parentElement) {
        const bg = getComputedStyle(el).backgroundColor;
        if (bg !== 'rgba(0, 0, 0, 0)' && bg !== 'transparent') return bg;
      }
    }
    return getComputedStyle(document.documentElement).backgroundColor;
  }
  return {style: s.outlineStyle, width: parseFloat(s.outlineWidth), color: s.outlineColor,
          around: [behind(r.left - out, r.top + r.height / 2),
                   behind(r.left + Math.min(r.width / 2, 20), r.top - out)]};
}"""


# Each text field's and select's edge against what surrounds it (WCAG 1.4.11: a control's boundary at 3:1).
EDGES = """() => [...document.querySelectorAll('input:not([type=checkbox]):not([type=hidden]), select')]
  .filter(e => e.checkVisibility()).map(e => {
    let p = e.parentElement, bg;
    for (; p; p = p.parentElement) {
      bg = getComputedStyle(p).backgroundColor;
      if (bg !== 'rgba(0, 0, 0, 0)') break;
    }
    return {name: e.id, edge: getComputedStyle(e).borderLeftColor, around: bg};
  })"""
# Anything fixed or sticky could cover the focused control (WCAG 2.4.11); the customer pages have none.
PINNED = """() => [...document.querySelectorAll('body *')].filter(e =>
  ['fixed', 'sticky'].includes(getComputedStyle(e).position)).map(e => e.tagName)"""


def rings_along_the_tab_order(page) -> dict[str, dict]:
    """Tab once round the page (from wherever focus is), measuring each control's focus ring."""
    rings: dict[str, dict] = {}
    previous = ""
    for _ in range(60):
        page.keyboard.press("Tab")
        name = focused(page)
        if name in ("body", previous):  # past the last control, or within a date input's parts
            continue
        if name in rings:
            break
        previous = name
        page.evaluate("document.activeElement.scrollIntoView({block: 'center'})")
        rings[name] = page.evaluate(RING)
    reachable = page.evaluate(f'[...document.querySelectorAll("{CONTROLS}")].filter(e => e.checkVisibility()).length')
    assert len(rings) >= reachable, f"Tab reached {len(rings)} of {reachable} controls: {list(rings)}"
    return rings


def weak_rings(rings: dict[str, dict]) -> list[str]:
    weak = []
    for name, ring in rings.items():
        ratios = [contrast(ring["color"], around) for around in ring["around"]]
        if ring["style"] in ("none", "hidden") or ring["width"] < 2 or min(ratios) < 3:
            weak.append(f"{name}: {ring['style']} {ring['width']}px {ring['color']} on {ring['around']} = {ratios}")
    return weak


def test_every_control_shows_its_focus_at_three_to_one(page, live_server, link_url):
    weak = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.goto(link_url())
        page.get_by_role("button", name="Check and send the key").click()  # the page with its error summary
        page.wait_for_load_state()
        rings = rings_along_the_tab_order(page)
        assert {"a[Skip to the content]", "input#id_secret", "button[Check and send the key]"} <= set(rings)
        # Focus set by the page itself: the error summary (and the received page's result, by the same rule).
        page.locator("#problems").focus()
        rings["div#problems"] = page.evaluate(RING)
        weak += [f"{scheme}, submission: {w}" for w in weak_rings(rings)]
        weak += [
            f"{scheme}, field edge {f['name']}: {f['edge']} on {f['around']}"
            for f in page.evaluate(EDGES)
            if contrast(f["edge"], f["around"]) < 3
        ]
        assert page.evaluate(PINNED) == []
        for path in (reverse("credentials:request_link"), "/k/" + "x" * 43 + "/"):
            page.goto(live_server.url + path)
            weak += [f"{scheme}, {path}: {w}" for w in weak_rings(rings_along_the_tab_order(page))]
    assert weak == []


def test_reduced_motion_stops_every_transition_and_animation(page, link_url):
    moving = """() => [...document.querySelectorAll('*')].filter(e => {
      const s = getComputedStyle(e);
      const long = v => v.split(',').some(t => parseFloat(t) > 0);
      return long(s.transitionDuration) || (s.animationName !== 'none' && long(s.animationDuration));
    }).map(e => e.tagName + (e.id ? '#' + e.id : ''))"""
    url = link_url()
    page.goto(url)
    assert page.evaluate(moving) != []  # the buttons do move by default: the check below sees them
    page.emulate_media(reduced_motion="reduce")
    page.goto(url)
    assert page.evaluate(moving) == []


# --- 400% zoom and text spacing ------------------------------------------------------------


# What 1280 x 1024 CSS px become at 400% zoom (WCAG 1.4.10 Reflow: 320 CSS px wide).
ZOOMED = {"width": 320, "height": 256}
# WCAG 1.4.12's text spacing, applied on top of the page's own styles.
TEXT_SPACING = (
    "* { line-height: 1.5 !important; letter-spacing: .12em !important; word-spacing: .16em !important; }"
    " p { margin-bottom: 2em !important; }"
)


def spaced(page) -> None:
    # A constructed style sheet: the Content-Security-Policy refuses an inline <style>, not the CSSOM.
    page.evaluate(
        "css => { const s = new CSSStyleSheet(); s.replaceSync(css);"
        " document.adoptedStyleSheets = [...document.adoptedStyleSheets, s]; }",
        TEXT_SPACING,
    )


LOST = """() => {
  const width = document.documentElement.clientWidth, lost = [];
  for (const e of document.querySelectorAll('body *')) {
    if (!e.checkVisibility() || e.classList.contains('skip')) continue;  // the skip link waits off-screen for focus
    const r = e.getBoundingClientRect();
    if (r.width && (r.left < -0.5 || r.right > width + 0.5))
      lost.push(e.tagName + (e.id ? '#' + e.id : '') + ' ' + r.right);
    const s = getComputedStyle(e);
    if ((s.overflowX === 'hidden' || s.overflowX === 'clip') && e.scrollWidth > e.clientWidth + 1
        && !e.classList.contains('visually-hidden')) lost.push('clipped ' + e.tagName);
  }
  return {scroll: document.documentElement.scrollWidth, width, lost};
}"""


def test_the_pages_read_at_400_percent_zoom_and_with_wider_text_spacing(page, live_server, link_url):
    page.set_viewport_size(ZOOMED)
    url = link_url()
    pages = {
        "submission": url,
        "lost link": live_server.url + reverse("credentials:request_link"),
        "link unusable": live_server.url + "/k/" + "x" * 43 + "/",
    }
    problems = {}
    for spacing in (False, True):
        for name, address in pages.items():
            page.goto(address)
            if spacing:
                spaced(page)
            if name == "submission":
                # The form with its error summary: the longest state of the page.
                page.get_by_role("button", name="Check and send the key").click()
                page.wait_for_load_state()
                if spacing:
                    spaced(page)
                # Every control is there and can be brought into view.
                for label in ("Client ID", "Expiry you chose", "Expiry date", "Your name", "Your work email"):
                    assert page.get_by_label(label).is_visible(), label
                assert page.get_by_label("Secret", exact=True).is_visible()
                assert page.get_by_role("button", name="Show the Secret").is_visible()
                assert page.get_by_role("button", name="Check and send the key").is_visible()
            found = page.evaluate(LOST)
            if found["scroll"] > found["width"] or found["lost"]:
                problems[(name, spacing)] = found
    assert problems == {}
