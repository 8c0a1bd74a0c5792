"""Fixtures shared by the project's tests: one strict build of the site per test session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
