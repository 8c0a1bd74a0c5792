"""Shared by the lab's smoke tests: each scenario's test module runs it once, tiny, on loopback."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import harness


def missing_tools() -> list[str]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    return [name for name, path in (("nginx", nginx), ("wrk", shutil.which("wrk"))) if path is None]


def require_tools() -> None:
    """Skip with the reason, or fail in CI, when nginx or wrk is missing."""
    missing = missing_tools()
    if missing:
        reason = f"the lab needs {' and '.join(missing)} (Debian: apt-get install nginx wrk)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install them")
        pytest.skip(reason)


def run_tiny(tmp_path_factory: pytest.TempPathFactory, settings: dict[str, dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """Run the scenarios named in `settings`, each with those overrides; (out folder, results)."""
    require_tools()
    out = tmp_path_factory.mktemp("bench")
    results = harness.run(list(settings), quick=True, out=out, overrides=settings, stream=io.StringIO())
    for name, entry in results["scenarios"].items():
        assert "error" not in entry, f"{name} failed: {entry.get('traceback')}"
    return out, results
