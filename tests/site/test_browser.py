"""The built site, served on 127.0.0.1, works in a real Chromium with no other host reachable.

Chromium comes from the system (Debian's `chromium` package); Playwright only drives it.
With CI set, a missing browser fails the run instead of skipping the test.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import ROOT, nav_pages

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "test-artifacts"
LOOPBACK = "127.0.0.1"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags that keep Chromium from calling home at start-up; on a closed network those calls
# would otherwise show up as stray requests.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
]
# Material renders each diagram into a closed shadow root; this keeps a reference to every
# shadow root created so the test can look inside without changing how the page renders.
RECORD_SHADOW_ROOTS = """
(() => {
  const attach = Element.prototype.attachShadow;
  window.__shadowRoots = [];
  Element.prototype.attachShadow = function (init) {
    const root = attach.call(this, init);
    window.__shadowRoots.push([this, root]);
    return root;
  };
})();
"""
DIAGRAM_REPORT = """
() => Array.from(document.querySelectorAll("div.mermaid")).map((host) => {
  const entry = window.__shadowRoots.find(([element]) => element === host);
  const svg = entry && entry[1].querySelector("svg");
  return {
    svg: Boolean(svg),
    error: Boolean(svg && (svg.getAttribute("aria-roledescription") === "error"
                           || /Syntax error/i.test(svg.textContent))),
  };
})
"""


def unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests, but {reason}. .ci/run installs Debian's chromium.")
    pytest.skip(f"browser tests skipped: {reason} (install Debian's chromium, or set CHROMIUM=/path)")


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def leaves_loopback(url: str) -> bool:
    """True for a request to any host but 127.0.0.1; data: and the site's own blob: URLs stay."""
    if url.startswith("data:"):
        return False
    return urlsplit(url.removeprefix("blob:")).hostname != LOOPBACK


# Module scope, not session: Playwright's sync API keeps an event loop running in this
# thread until it stops, and the asyncio tests that run after this module need it gone.
@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        unavailable("no Chromium was found on PATH")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed")
    # Every request that leaves the loopback goes to a proxy that refuses connections (a port
    # bound but never listening), which cuts the browser off the way a closed network does.
    # Intercepting requests instead would turn off the HTTP cache and reload mermaid on every
    # page. A request for another host is still seen, and fails the test, through the
    # request event that Visit records.
    with socket.socket() as refusing, sync_playwright() as playwright:
        refusing.bind((LOOPBACK, 0))
        proxy = {"server": f"http://{LOOPBACK}:{refusing.getsockname()[1]}", "bypass": LOOPBACK}
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, proxy=proxy)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def site_url(built_site):
    handler = functools.partial(QuietHandler, directory=str(built_site))
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class Visit:
    """A browser context that records every request; the browser refuses any that leaves 127.0.0.1."""

    def __init__(self, browser, color_scheme="light"):
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context(color_scheme=color_scheme, viewport={"width": 1280, "height": 900})
        self.context.add_init_script(RECORD_SHADOW_ROOTS)
        # The context's request event also reports what the page's workers ask for.
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page = self.context.new_page()
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    @property
    def outside(self) -> list[str]:
        return [url for url in self.requests if leaves_loopback(url)]

    def assert_stayed_local(self):
        assert self.requests, "no request was observed, so this check would prove nothing"
        assert self.outside == [], f"the site asked other hosts for: {self.outside}"

    def wait_for_diagrams(self, expected: int):
        try:
            self.page.wait_for_function(
                "n => document.querySelectorAll('pre.mermaid').length === 0"
                " && document.querySelectorAll('div.mermaid').length === n",
                arg=expected, timeout=20_000,
            )
        except Exception as timeout:
            left = self.page.eval_on_selector_all("pre.mermaid", "els => els.map(e => e.textContent.slice(0, 80))")
            pytest.fail(
                f"{expected} diagram(s) expected; not rendered: {left}; "
                f"browser errors: {self.errors}; outside requests: {self.outside} ({timeout})"
            )
        return self.page.evaluate(DIAGRAM_REPORT)

    def forget(self):
        """Start a new page's record; the context, and its HTTP cache, carries on."""
        self.requests.clear()
        self.errors.clear()

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser):
    visits = []

    def open_visit(**options):
        visits.append(Visit(browser, **options))
        return visits[-1]

    yield open_visit
    for v in visits:
        v.close()


def diagram_count(built_site: Path, url_path: str) -> int:
    html = (built_site / url_path / "index.html").read_text(encoding="utf-8")
    return html.count('class="mermaid"')


def test_only_requests_to_loopback_count_as_staying_local():
    origin = "http://127.0.0.1:8000"
    assert not leaves_loopback(f"{origin}/assets/vendor/mermaid/mermaid.min.js")
    assert not leaves_loopback(f"blob:{origin}/0f6c2a3e-6d1b-4c1e-9d1e-3f1a2b3c4d5e")
    assert not leaves_loopback("data:image/svg+xml;base64,PHN2Zy8+")
    assert leaves_loopback("https://unpkg.com/mermaid@11/dist/mermaid.min.js")
    assert leaves_loopback("http://localhost:8000/")
    assert leaves_loopback("http://93.184.216.34/a.png")


def test_the_home_page_has_a_diagram(built_site):
    assert diagram_count(built_site, "") >= 1, "docs/index.md should hold at least one mermaid diagram"


@pytest.fixture(scope="module")
def reader(browser):
    """One browser context for the page-by-page checks: its cache spares reloading mermaid."""
    v = Visit(browser)
    yield v
    v.close()


# Every page, not only those whose Markdown shows a diagram: diagrams also arrive by include.
@pytest.mark.parametrize("url_path", nav_pages())
def test_every_diagram_renders_to_svg_without_a_mermaid_error(reader, site_url, built_site, url_path):
    expected = diagram_count(built_site, url_path)
    v = reader
    v.forget()
    v.page.goto(site_url + url_path)
    report = v.wait_for_diagrams(expected)
    assert report == [{"svg": True, "error": False}] * expected, report
    if url_path == "":
        ARTIFACTS.mkdir(exist_ok=True)
        v.page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)
    v.assert_stayed_local()


def test_diagrams_render_after_instant_navigation_from_a_page_without_any(visit, site_url, built_site):
    v = visit()
    v.page.goto(site_url + "reference/")
    assert v.page.locator("pre.mermaid, div.mermaid").count() == 0
    v.page.locator("a.md-tabs__link", has_text="Home").click()
    v.page.wait_for_url(site_url)
    report = v.wait_for_diagrams(diagram_count(built_site, ""))
    assert report and all(item == {"svg": True, "error": False} for item in report), report
    v.assert_stayed_local()


def test_search_finds_a_known_word_offline(visit, site_url):
    v = visit()
    v.page.goto(site_url)
    search = v.page.locator("input.md-search__input")
    search.click()
    # Typed key by key: Material searches on keyboard events, which fill() does not send.
    search.press_sequentially("intermediaries", delay=30)
    results = v.page.locator(".md-search-result__item")
    results.first.wait_for(timeout=15_000)
    links = results.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert any("reference/" in link for link in links), links
    assert any(re.search(r"workers/search\.[0-9a-f]+\.min\.js", url) for url in v.requests), (
        "the search worker was not loaded from the site"
    )
    v.assert_stayed_local()


def test_the_palette_toggle_switches_between_light_and_dark(visit, site_url):
    v = visit(color_scheme="light")
    v.page.goto(site_url)
    body = v.page.locator("body")
    toggle = v.page.locator("form[data-md-component=palette] label:visible")
    assert body.get_attribute("data-md-color-scheme") == "default"
    toggle.click()
    assert body.get_attribute("data-md-color-scheme") == "slate"
    ARTIFACTS.mkdir(exist_ok=True)
    v.page.screenshot(path=str(ARTIFACTS / "home-dark.png"))
    toggle.click()
    assert body.get_attribute("data-md-color-scheme") == "default"
    v.assert_stayed_local()
