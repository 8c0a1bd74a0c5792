"""The strict build passes, and what it produces points at no other host."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

from .conftest import html_pages, nav_pages

# Attributes through which a page makes the browser fetch something.
FETCHING_ATTRIBUTES = {
    "script": ["src"],
    "link": ["href"],
    "img": ["src", "srcset"],
    "source": ["src", "srcset"],
    "video": ["src", "poster"],
    "audio": ["src"],
    "iframe": ["src"],
    "embed": ["src"],
    "object": ["data"],
    "image": ["href", "xlink:href"],
    "use": ["href", "xlink:href"],
}
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)""", re.IGNORECASE)
CSS_IMPORT = re.compile(r"""@import\s+['"]([^'"]+)""", re.IGNORECASE)


class FetchedUrls(HTMLParser):
    """Collects every URL a page asks the browser to load, inline styles included."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in FETCHING_ATTRIBUTES.get(tag, []):
            value = attributes.get(name)
            if value:
                # srcset holds "url width, url width"
                self.urls.extend(part.split()[0] for part in value.split(",") if part.strip())
        if attributes.get("style"):
            self.urls.extend(css_urls(attributes["style"]))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.urls.extend(css_urls(data))


def css_urls(css: str) -> list[str]:
    return CSS_URL.findall(css) + CSS_IMPORT.findall(css)


def is_other_host(url: str) -> bool:
    if url.startswith(("data:", "#")):
        return False
    parts = urlsplit(url)
    return bool(parts.scheme or parts.netloc)


def test_strict_build_passes(site_build):
    assert site_build.returncode == 0, f"mkdocs build --strict failed:\n{site_build.stderr[-4000:]}"


def test_every_nav_page_is_built(built_site):
    pages = nav_pages()
    assert "" in pages and len(pages) >= 8
    missing = [page for page in pages if not (built_site / page / "index.html").exists()]
    assert missing == [], f"nav pages with no built HTML: {missing}"


def test_built_html_fetches_nothing_from_other_hosts(built_site):
    offenders = []
    for page in html_pages(built_site):
        parser = FetchedUrls()
        parser.feed(page.read_text(encoding="utf-8"))
        offenders += [f"{page.relative_to(built_site)}: {url}" for url in parser.urls if is_other_host(url)]
    assert offenders == [], "pages load resources from other hosts:\n" + "\n".join(offenders)


def test_built_css_fetches_nothing_from_other_hosts(built_site):
    stylesheets = list(built_site.rglob("*.css"))
    assert stylesheets, "the build produced no stylesheet, so this check would prove nothing"
    offenders = [
        f"{sheet.relative_to(built_site)}: {url}"
        for sheet in stylesheets
        for url in css_urls(sheet.read_text(encoding="utf-8"))
        if is_other_host(url)
    ]
    assert offenders == [], "stylesheets load fonts or images from other hosts:\n" + "\n".join(offenders)


def test_mermaid_is_served_by_the_site_itself(built_site):
    bundle = built_site / "assets" / "vendor" / "mermaid" / "mermaid.min.js"
    assert bundle.exists(), "the mermaid bundle is not in the built site"
    home = (built_site / "index.html").read_text(encoding="utf-8")
    assert 'src="assets/vendor/mermaid/mermaid.min.js"' in home


def test_the_checker_flags_a_cdn_script_and_a_web_font():
    parser = FetchedUrls()
    parser.feed(
        '<script src="https://unpkg.com/mermaid@11/dist/mermaid.min.js"></script>'
        '<link rel="stylesheet" href="//fonts.googleapis.com/css?family=Roboto">'
        '<div style="background: url(\'https://example.org/a.png\')"></div>'
        '<img src="assets/logo.png"><script src="assets/app.js"></script>'
    )
    assert [url for url in parser.urls if is_other_host(url)] == [
        "https://unpkg.com/mermaid@11/dist/mermaid.min.js",
        "//fonts.googleapis.com/css?family=Roboto",
        "https://example.org/a.png",
    ]
    assert css_urls("@font-face { src: url(https://fonts.gstatic.com/x.woff2) }") == [
        "https://fonts.gstatic.com/x.woff2"
    ]
