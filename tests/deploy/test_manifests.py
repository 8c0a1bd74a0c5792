"""deploy/: valid Kubernetes objects, and the design decisions of deploy/README.md, kept."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from reference.drain import DrainController
from tests.deploy.manifests import (
    DEPLOY,
    KUBERNETES_VERSION,
    component,
    documents,
    find,
    flag,
    in_folder,
    long_running,
    long_running_containers,
    loopback_urls,
    of_kind,
    pod_spec,
    python_snippet,
    run_once_init_containers,
    sidecars,
    workloads,
)

RECOMMENDED = ("app.kubernetes.io/part-of", "app.kubernetes.io/managed-by")
POD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
)
SOCKET_FOLDER = "/var/run/sidecarlab"


def ids(items):
    return [item.id for item in items]


def container_ids(pairs):
    return [f"{doc.id}:{container['name']}" for doc, container in pairs]


def test_deploy_holds_the_manifests_of_both_patterns():
    kinds = {(doc.path.parent.name, doc.kind) for doc in documents()}
    assert {("sidecar", "Deployment"), ("nodeagent", "DaemonSet"),
            ("controlplane", "Deployment"), ("deploy", "Namespace")} <= kinds


@pytest.mark.parametrize("doc", documents(), ids=ids(documents()))
def test_every_manifest_is_a_valid_kubernetes_object(doc):
    # strict: an unknown or misspelt field fails here instead of being dropped by the API
    # server. SchemaNotFoundError (an unknown kind) fails the test too.
    try:
        kubernetes_validate.validate(doc.body, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        pytest.fail(f"{doc.id} is not valid Kubernetes {KUBERNETES_VERSION}: {path}: {error.message}")


@pytest.mark.parametrize("doc", documents(), ids=ids(documents()))
def test_every_object_carries_the_recommended_labels(doc):
    labels = doc.body["metadata"].get("labels", {})
    assert labels.get("app.kubernetes.io/part-of") == "sidecarlab"
    assert all(label in labels for label in RECOMMENDED)
    if doc.kind != "Namespace":
        assert doc.namespace in {"sidecarlab", "sidecarlab-node"}, "every object names its namespace"
        assert "app.kubernetes.io/name" in labels


@pytest.mark.parametrize("doc", workloads(), ids=ids(workloads()))
def test_workloads_select_their_own_pods_by_recommended_labels(doc):
    selector = doc.body["spec"]["selector"]["matchLabels"]
    template_labels = doc.body["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()
    assert all(label in template_labels for label in POD_LABELS)


@pytest.mark.parametrize("service", of_kind("Service"), ids=ids(of_kind("Service")))
def test_services_select_pods_that_listen_on_the_target_port(service):
    selector = service.body["spec"]["selector"]
    pods = [doc for doc in workloads() if doc.namespace == service.namespace
            and selector.items() <= doc.body["spec"]["template"]["metadata"]["labels"].items()]
    assert pods, f"{service.id} selects no pods"
    for pod in pods:
        ports = [p for c in long_running(pod_spec(pod)) for p in c.get("ports", [])]
        for service_port in service.body["spec"]["ports"]:
            target = service_port["targetPort"]
            key = "name" if isinstance(target, str) else "containerPort"
            assert any(port.get(key) == target for port in ports), (
                f"{service.id} port {service_port['name']} targets {target!r}, "
                f"which no container of {pod.id} declares"
            )


# -- the sidecar pattern ----------------------------------------------------------------------

SIDECAR_PODS = in_folder("sidecar", "Deployment")


@pytest.mark.parametrize("doc", SIDECAR_PODS, ids=ids(SIDECAR_PODS))
def test_the_proxy_is_a_native_sidecar_started_before_the_app(doc):
    spec = pod_spec(doc)
    proxies = sidecars(spec)
    assert [component(c) for c in proxies] == ["sidecar"], (
        "the proxy belongs in initContainers with restartPolicy: Always (a native sidecar)"
    )
    assert all(component(c) != "sidecar" for c in spec["containers"])
    # The startup probe is what makes the kubelet wait for the proxy before the app starts.
    assert "startupProbe" in proxies[0]


@pytest.mark.parametrize("doc", SIDECAR_PODS, ids=ids(SIDECAR_PODS))
def test_the_proxy_has_no_prestop_hook_so_it_outlives_the_app(doc):
    # A sidecar's preStop runs as soon as the pod starts terminating (KEP-753); a drain
    # started there would close the proxy while the app is still draining through it.
    proxy = sidecars(pod_spec(doc))[0]
    assert "preStop" not in proxy.get("lifecycle", {})


@pytest.mark.parametrize("doc", SIDECAR_PODS, ids=ids(SIDECAR_PODS))
def test_the_app_listens_on_loopback_where_its_proxy_forwards(doc):
    spec = pod_spec(doc)
    proxy = sidecars(spec)[0]
    (app,) = spec["containers"]
    assert flag(app, "--host") == "127.0.0.1", "only the proxy may reach the app"
    assert flag(proxy, "--app-address") == f"127.0.0.1:{flag(app, '--port')}"
    assert flag(proxy, "--service") == "reviews"


# -- the node-agent pattern -------------------------------------------------------------------

(AGENT,) = in_folder("nodeagent", "DaemonSet")
AGENT_APPS = in_folder("nodeagent", "Deployment")


def socket_volume(spec: dict) -> dict:
    (volume,) = [v for v in spec["volumes"] if v.get("hostPath", {}).get("path") == SOCKET_FOLDER]
    return volume


def test_the_node_agent_is_a_daemonset_with_a_hostpath_socket_folder():
    spec = pod_spec(AGENT)
    volume = socket_volume(spec)
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    (agent,) = spec["containers"]
    assert component(agent) == "nodeagent"
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert flag(agent, "--socket").startswith(mounts[volume["name"]] + "/")


def test_the_node_agent_is_replaced_one_node_at_a_time_and_scheduled_first():
    strategy = AGENT.body["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 1
    assert strategy["rollingUpdate"].get("maxSurge", 0) == 0
    spec = pod_spec(AGENT)
    assert spec["priorityClassName"] == "system-node-critical"
    assert {t.get("effect") for t in spec["tolerations"]} >= {"NoSchedule", "NoExecute"}
    quota = of_kind("ResourceQuota")
    assert any(
        "system-node-critical" in expr["values"]
        for doc in quota if doc.namespace == AGENT.namespace
        for expr in doc.body["spec"]["scopeSelector"]["matchExpressions"]
    ), "clusters that restrict system-node-critical need a quota for it in the namespace"


@pytest.mark.parametrize("doc", AGENT_APPS, ids=ids(AGENT_APPS))
def test_the_example_app_registers_over_the_agents_socket(doc):
    (agent,) = pod_spec(AGENT)["containers"]
    spec = pod_spec(doc)
    volume = socket_volume(spec)
    (app,) = spec["containers"]
    mounts = {m["name"]: m for m in app["volumeMounts"]}
    mount = mounts[volume["name"]]
    assert mount.get("readOnly") is True
    socket_path = flag(app, "--node-agent")
    assert socket_path == flag(agent, "--socket")
    assert socket_path.startswith(mount["mountPath"] + "/")
    # The outbound listener the agent hands out is on 127.0.0.1: only a shared network
    # namespace makes that the same loopback for both.
    assert spec.get("hostNetwork") is True and pod_spec(AGENT).get("hostNetwork") is True
    assert spec["securityContext"]["runAsGroup"] == pod_spec(AGENT)["securityContext"]["runAsGroup"]


def test_only_the_socket_folder_init_container_runs_as_root_and_with_chown_alone():
    for doc in workloads():
        spec = pod_spec(doc)
        for container in run_once_init_containers(spec):
            context = container["securityContext"]
            assert container.get("resources", {}).get("limits"), f"{doc.id}: {container['name']}"
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            if context.get("runAsUser") == 0:
                assert doc is AGENT and container["name"] == "socket-dir"
                assert context["capabilities"]["add"] == ["CHOWN"]
                assert any(m["mountPath"] == SOCKET_FOLDER for m in container["volumeMounts"])


# -- the control plane ------------------------------------------------------------------------

(CONTROL_PLANE,) = in_folder("controlplane", "Deployment")


def test_the_control_plane_is_one_pod_recreated_on_a_persistent_volume():
    spec = CONTROL_PLANE.body["spec"]
    assert spec["replicas"] == 1, "one SQLite file, one writer"
    assert spec["strategy"]["type"] == "Recreate"
    pod = pod_spec(CONTROL_PLANE)
    (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert find("PersistentVolumeClaim", CONTROL_PLANE.namespace,
                claim["persistentVolumeClaim"]["claimName"])
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["name"]]
    assert flag(container, "--db").startswith(mount["mountPath"] + "/")


def test_the_control_plane_token_comes_from_a_secret_not_from_the_command_line():
    (container,) = pod_spec(CONTROL_PLANE)["containers"]
    assert flag(container, "--token") is None, "a flag shows up in `ps` and in the pod spec"
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["SIDECARLAB_TOKEN"]["valueFrom"]
    assert not of_kind("Secret"), "no placeholder Secret: deploy/README.md says how to create it"


def control_plane_port(name: str) -> int:
    service = find("Service", CONTROL_PLANE.namespace, "controlplane")
    (port,) = [p["port"] for p in service.body["spec"]["ports"] if p["name"] == name]
    return port


@pytest.mark.parametrize(
    ("doc", "container"), long_running_containers(), ids=container_ids(long_running_containers())
)
def test_components_find_the_control_plane_at_its_service(doc, container):
    service_host = f"controlplane.{CONTROL_PLANE.namespace}.svc"
    if (url := flag(container, "--control-plane")) is not None:
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == (service_host, control_plane_port("http"))
    if (address := flag(container, "--control-plane-grpc")) is not None:
        assert address == f"{service_host}:{control_plane_port('grpc')}"


def test_the_sample_proxy_config_is_valid_and_names_services_of_the_manifests():
    from reference.proxy_config import parse_proxy_config

    config = parse_proxy_config(json.loads((DEPLOY / "sidecar/reviews-proxy-config.json").read_text()))
    for subsets in config.clusters.values():
        for endpoints in subsets.values():
            for endpoint in endpoints:
                host, port = endpoint.rsplit(":", 1)
                name, namespace, svc = host.split(".")
                service = find("Service", namespace, name)
                assert svc == "svc" and service, f"{endpoint} names no Service in deploy/"
                assert int(port) in {p["port"] for p in service.body["spec"]["ports"]}


# -- every container --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "container"), long_running_containers(), ids=container_ids(long_running_containers())
)
def test_every_container_has_resources_probes_and_a_locked_down_security_context(doc, container):
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()
    assert {"livenessProbe", "readinessProbe"} <= container.keys()

    pod_context = pod_spec(doc)["securityContext"]
    context = {**pod_context, **container["securityContext"]}
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] != 0
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec(doc)["automountServiceAccountToken"] is False, "nothing here calls the API"


@pytest.mark.parametrize(
    ("doc", "container"), long_running_containers(), ids=container_ids(long_running_containers())
)
def test_exec_probes_and_hooks_call_the_containers_own_loopback_ports(doc, container):
    # The exec snippets are code: they must compile, and call a port this container listens
    # on, on a path it serves. A typo would only show up as a pod that never becomes ready.
    own_ports = {int(flag(container, name)) for name in ("--port", "--admin-port")
                 if flag(container, name) is not None}
    hooks = {f"{kind}Probe": container.get(f"{kind}Probe", {}) for kind in ("startup", "readiness", "liveness")}
    hooks["preStop"] = container.get("lifecycle", {}).get("preStop", {})
    for where, handler in hooks.items():
        if "exec" not in handler:
            continue
        code = python_snippet(handler["exec"]["command"])
        compile(code, f"{doc.id}:{container['name']}:{where}", "exec")
        urls = loopback_urls(code)
        assert len(urls) == 1, f"{where}: one loopback URL expected in {code!r}"
        port, path = urls[0]
        assert port in own_ports, f"{where} calls port {port}; the container listens on {own_ports}"
        expected = "/drain" if where == "preStop" else ("/healthz" if where == "livenessProbe" else "/readyz")
        assert path == expected
        if where == "preStop":
            assert "method='POST'" in code


@pytest.mark.parametrize("doc", workloads(), ids=ids(workloads()))
def test_the_grace_period_outlasts_every_drain_the_pod_runs(doc):
    spec = pod_spec(doc)

    def grace(container: dict) -> float:
        value = flag(container, "--drain-grace")
        assert value is not None, f"{container['name']}: state --drain-grace; the grace period is sized by it"
        delay = flag(container, "--drain-delay")
        default_delay = DrainController().delay
        assert 0 <= float(delay if delay is not None else default_delay) <= float(value)
        return float(value)

    # Main containers drain side by side; each native sidecar gets SIGTERM only after the
    # main containers (and the sidecars after it) have exited, so their drains add up.
    needed = max(grace(c) for c in spec["containers"]) + sum(grace(c) for c in sidecars(spec))
    assert spec["terminationGracePeriodSeconds"] >= needed, (
        f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} < {needed} s of "
        "drains: the kubelet would SIGKILL requests the drain promised to finish"
    )


@pytest.mark.parametrize(
    ("doc", "container"), long_running_containers(), ids=container_ids(long_running_containers())
)
def test_variables_used_in_args_are_defined(doc, container):
    defined = {e["name"] for e in container.get("env", [])}
    for arg in container["args"]:
        if arg.startswith("$(") and arg.endswith(")"):
            assert arg[2:-1] in defined, f"{arg} would reach the program unexpanded"


def test_every_container_runs_the_one_image_the_containerfile_builds():
    import tomllib

    version = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["version"]
    images = {c["image"] for doc in workloads() for c in
              pod_spec(doc).get("initContainers", []) + pod_spec(doc)["containers"]}
    assert images == {f"sidecarlab:{version}"}
