"""deploy/Containerfile builds the one image the manifests run, as a non-root user."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.deploy.manifests import DEPLOY, ROOT, pod_spec, workloads

CONTAINERFILE = DEPLOY / "Containerfile"
IGNOREFILE = DEPLOY / "Containerfile.dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in CONTAINERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        result.append((keyword.upper(), rest.strip()))
        pending = ""
    return result


def only(keyword: str) -> list[str]:
    return [rest for key, rest in instructions() if key == keyword]


def test_the_image_starts_from_python_312_slim():
    assert only("FROM") == ["python:3.12-slim"]


def test_the_project_is_installed_with_pip_and_no_cache():
    assert any("pip install --no-cache-dir ." in run for run in only("RUN"))


def test_the_image_runs_as_the_numeric_non_root_uid_of_the_manifests():
    (user,) = only("USER")
    uid, _, gid = user.partition(":")
    # Numeric, or the kubelet cannot check runAsNonRoot against the image.
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()
    for doc in workloads():
        assert pod_spec(doc)["securityContext"]["runAsUser"] == int(uid), doc.id


def test_the_entry_point_is_python_m_reference_and_that_module_exists():
    (entrypoint,) = only("ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "reference"], "exec form, so SIGTERM reaches Python"
    if importlib.util.find_spec("reference.__main__") is None:
        pytest.skip("reference/__main__.py (the entry point) does not exist yet")


def test_every_file_the_image_copies_exists_and_is_let_through_the_ignore_file():
    patterns = [line.strip() for line in IGNOREFILE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    # An allow-list: everything is excluded, then what the build needs is let back in.
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for copy in only("COPY"):
        *sources, _destination = copy.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            assert source.rstrip("/") in allowed, f"COPY {source}: excluded by {IGNOREFILE.name}"
