"""The interview tests read the session's strict site build (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def interview_site(built_site) -> Path:
    """The built site's folder; mkdocs.yml registers the interview hook, so it ran."""
    return built_site
