"""Load deploy/*.yaml once and answer the questions the deploy tests ask of it."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# The oldest release these manifests promise to work on: native sidecars are on by default
# since 1.29 and stable since 1.33.
KUBERNETES_VERSION = "1.33"
WORKLOAD_KINDS = ("Deployment", "DaemonSet")


@dataclass(frozen=True)
class Document:
    """One YAML document of one manifest file."""

    path: Path
    index: int
    body: dict

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def namespace(self) -> str | None:
        return self.body["metadata"].get("namespace")

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(DEPLOY)}:{self.kind}/{self.name}"


@cache
def documents() -> tuple[Document, ...]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for index, body in enumerate(yaml.safe_load_all(path.read_text())):
            if body:
                docs.append(Document(path, index, body))
    return tuple(docs)


def of_kind(*kinds: str) -> list[Document]:
    return [doc for doc in documents() if doc.kind in kinds]


def workloads() -> list[Document]:
    return of_kind(*WORKLOAD_KINDS)


def in_folder(folder: str, *kinds: str) -> list[Document]:
    return [doc for doc in of_kind(*kinds) if doc.path.parent == DEPLOY / folder]


def pod_spec(workload: Document) -> dict:
    return workload.body["spec"]["template"]["spec"]


def is_sidecar(container: dict) -> bool:
    """A native sidecar: an init container that the kubelet keeps running (restartPolicy Always)."""
    return container.get("restartPolicy") == "Always"


def sidecars(spec: dict) -> list[dict]:
    return [c for c in spec.get("initContainers", []) if is_sidecar(c)]


def run_once_init_containers(spec: dict) -> list[dict]:
    return [c for c in spec.get("initContainers", []) if not is_sidecar(c)]


def long_running(spec: dict) -> list[dict]:
    """Containers that run as long as the pod: native sidecars and the main containers."""
    return sidecars(spec) + list(spec["containers"])


def long_running_containers() -> list[tuple[Document, dict]]:
    return [(doc, c) for doc in workloads() for c in long_running(pod_spec(doc))]


def component(container: dict) -> str:
    """The component a container runs: the image's entry point is `python -m reference`."""
    return container["args"][0]


def flag(container: dict, name: str) -> str | None:
    """The value given to `--name` in the container's args, or None."""
    args = container.get("args", [])
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def flags(container: dict) -> set[str]:
    return {arg.split("=", 1)[0] for arg in container.get("args", []) if arg.startswith("--")}


def python_snippet(command: list[str]) -> str:
    """The code of an exec `python -c CODE` command."""
    assert command[:2] == ["python", "-c"] and len(command) == 3, (
        f"exec commands here are `python -c CODE` (the image has no curl): {shlex.join(command)}"
    )
    return command[2]


URL = re.compile(r"http://127\.0\.0\.1:(\d+)(/[a-z]*)")


def loopback_urls(code: str) -> list[tuple[int, str]]:
    """(port, path) of every http://127.0.0.1 URL in a snippet."""
    return [(int(port), path) for port, path in URL.findall(code)]


def find(kind: str, namespace: str, name: str) -> Document | None:
    for doc in of_kind(kind):
        if doc.namespace == namespace and doc.name == name:
            return doc
    return None
