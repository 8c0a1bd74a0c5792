"""Helpers for the site tests; the build itself is a fixture in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

from ..conftest import ROOT


def nav_pages() -> list[str]:
    """URL paths, relative to the site root, of every page in mkdocs.yml's nav."""
    from mkdocs.config import load_config

    def walk(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)

    paths = []
    for page in walk(load_config(str(ROOT / "mkdocs.yml"))["nav"]):
        path = page.removesuffix(".md").removesuffix("index")
        paths.append(path if path.endswith("/") or not path else path + "/")
    return paths


def html_pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if p.name != "404.html" or p.parent == site)
