"""Build the site once per test session, into a temporary folder, in strict mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MERMAID_BUNDLE = ROOT / "docs" / "assets" / "vendor" / "mermaid" / "mermaid.min.js"


@pytest.fixture(scope="session")
def site_build(tmp_path_factory) -> subprocess.CompletedProcess:
    if not MERMAID_BUNDLE.exists():
        pytest.fail(
            f"{MERMAID_BUNDLE.relative_to(ROOT)} is missing: run `make test`, which fetches it, "
            "instead of calling pytest directly on a fresh clone."
        )
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT, capture_output=True, text=True,
    )
    result.site_dir = site_dir
    return result


@pytest.fixture(scope="session")
def built_site(site_build) -> Path:
    if site_build.returncode != 0:
        pytest.fail(f"the strict build failed:\n{site_build.stderr[-4000:]}")
    return site_build.site_dir


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
