"""Fixtures shared by the project's tests: one strict build of the site per test session.

The build takes about half a minute of one core. When a collected test needs it, it starts as
soon as collection ends, at the lowest CPU priority, so it runs on whatever core the tests
before the site tests leave idle and takes almost nothing from those that are timing-sensitive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MERMAID_BUNDLE = ROOT / "docs" / "assets" / "vendor" / "mermaid" / "mermaid.min.js"
LOWEST_PRIORITY = 19


class SiteBuild:
    """`mkdocs build --strict` into a temporary folder, running as a child process."""

    def __init__(self) -> None:
        self.site_dir = Path(tempfile.mkdtemp(prefix="sidecar-lab-site-"))
        # Files, not pipes: a full pipe nobody reads would stall the build.
        self._stdout = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(self.site_dir)],
            cwd=ROOT, stdout=self._stdout, stderr=self._stderr, text=True,
        )
        self._set_priority(LOWEST_PRIORITY)
        self._result: subprocess.CompletedProcess | None = None

    def _set_priority(self, niceness: int) -> None:
        # Raising priority back needs privileges CI may not grant; the build then just
        # keeps the lowest priority, which only matters on a machine busy with other work.
        try:
            os.setpriority(os.PRIO_PROCESS, self.process.pid, niceness)
        except (PermissionError, ProcessLookupError):
            pass

    def result(self) -> subprocess.CompletedProcess:
        """Wait for the build; from here on nothing else runs, so it gets a normal share."""
        if self._result is None:
            if self.process.poll() is None:
                self._set_priority(0)
            returncode = self.process.wait()
            self._stdout.seek(0)
            self._stderr.seek(0)
            self._result = subprocess.CompletedProcess(
                self.process.args, returncode, self._stdout.read(), self._stderr.read()
            )
            self._result.site_dir = self.site_dir
        return self._result

    def discard(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stdout.close()
        self._stderr.close()
        shutil.rmtree(self.site_dir, ignore_errors=True)


BACKGROUND_BUILD = pytest.StashKey[SiteBuild]()


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or not MERMAID_BUNDLE.exists():
        return
    if any("site_build" in getattr(item, "fixturenames", ()) for item in session.items):
        session.config.stash[BACKGROUND_BUILD] = SiteBuild()


# Last, so the session's fixtures (the server that serves the built site) are gone first.
@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    build = session.config.stash.get(BACKGROUND_BUILD, None)
    if build is not None:
        build.discard()


@pytest.fixture(scope="session")
def site_build(pytestconfig) -> subprocess.CompletedProcess:
    if not MERMAID_BUNDLE.exists():
        pytest.fail(
            f"{MERMAID_BUNDLE.relative_to(ROOT)} is missing: run `make test`, which fetches it, "
            "instead of calling pytest directly on a fresh clone."
        )
    build = pytestconfig.stash.get(BACKGROUND_BUILD, None)
    if build is None:
        # Reached through a fixture lookup that collection could not see: build now.
        build = pytestconfig.stash[BACKGROUND_BUILD] = SiteBuild()
    return build.result()


@pytest.fixture(scope="session")
def built_site(site_build) -> Path:
    if site_build.returncode != 0:
        pytest.fail(f"the strict build failed:\n{site_build.stderr[-4000:]}")
    return site_build.site_dir
