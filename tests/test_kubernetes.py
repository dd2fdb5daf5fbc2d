"""The Kubernetes manifests in deploy/kubernetes/, as `kubectl apply -k` would send them.

Each overlay is rendered by the real kustomize (`kubectl kustomize`, or a standalone
`kustomize build` where one is installed), validated offline against the Kubernetes
OpenAPI schemas in strict mode (kubernetes-validate: an unknown or misspelled field is an
error), and checked against what the service really does: the routes and port BentoML
serves, the SLIMSERVE_* settings service/config.py reads, the request timeout the grace
period must cover. The last test serves a real bundle with the Deployment's environment.
"""

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from conftest import free_port

from service.config import ENV_PREFIX, ServeConfig
from slimserve.errors import SlimserveError

REPO_ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE_ROOT = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu", "cpu-servicemonitor")
# The oldest Kubernetes the manifests are meant for (topologySpreadConstraints'
# matchLabelKeys is on by default from 1.27) and the newest that kubernetes-validate
# 1.37 has schemas for.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
CORE_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
# Custom resources: no schema in kubernetes-validate; checked field by field below.
CRD_KINDS = {"ServiceMonitor"}


def _kustomize_command(directory: Path) -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(directory)]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(directory)]
    # Debian's kubernetes-client (kubectl 1.20, kustomize v2) is too old for `labels:`.
    pytest.fail("neither kubectl nor kustomize is installed; install kubectl >= 1.27 or kustomize v5")


@cache
def _rendered_text(overlay: str) -> str:
    command = _kustomize_command(KUSTOMIZE_ROOT / "overlays" / overlay)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    return result.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's manifests, freshly parsed (tests may change their copy)."""
    return [doc for doc in yaml.safe_load_all(_rendered_text(overlay)) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def server_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["slimserve"]
    return containers[0]


def cpu_quantity(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pod_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet sets it: the Downward API gives a
    resource divided by its divisor, rounded up."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        field = item["valueFrom"]["resourceFieldRef"]
        assert field["resource"] in ("limits.cpu", "requests.cpu"), f"unexpected {field}"
        kind, resource = field["resource"].split(".")
        amount = cpu_quantity(container["resources"][kind][resource])
        env[item["name"]] = str(math.ceil(amount / cpu_quantity(field.get("divisor", "1"))))
    return env


def pod_config(overlay: str) -> ServeConfig:
    """The ServeConfig the service builds in the pod (raises on a value it would refuse)."""
    return ServeConfig.from_env(pod_env(server_container(render(overlay))))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# ------------------------------------------------------------------ schemas and README


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_manifest_passes_strict_schema_validation(overlay, version):
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    expected = CORE_KINDS | ({"ServiceMonitor"} if overlay == "cpu-servicemonitor" else set())
    assert kinds == expected
    assert len(docs) == len(kinds)
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            assert kubernetes_validate.validate(doc, version, strict=True) == version.rsplit(".", 1)[0]


def test_strict_validation_refuses_a_misspelled_field():
    """What makes the test above worth having: a typo is an error, not an ignored key."""
    deployment = one(render("cpu"), "Deployment")
    context = deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    context["readOnlyRootFilesytem"] = context.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_readme_apply_lines_name_the_overlays_these_tests_render():
    commands = set()
    for readme in (REPO_ROOT / "README.md", KUSTOMIZE_ROOT / "README.md"):
        commands |= set(re.findall(r"kubectl apply -k (\S+)", readme.read_text()))
    assert {"deploy/kubernetes/overlays/cpu", "deploy/kubernetes/overlays/gpu"} <= commands
    for path in commands:
        assert (REPO_ROOT / path / "kustomization.yaml").is_file(), path
        assert Path(path).name in OVERLAYS, f"{path} is not rendered by these tests"


def test_overlays_retag_the_image_the_base_deployment_runs():
    """`kustomize edit set image` and the overlays' `images:` match the base image by name."""
    base = yaml.safe_load((KUSTOMIZE_ROOT / "base" / "deployment.yaml").read_text())
    base_image = base["spec"]["template"]["spec"]["containers"][0]["image"]
    for overlay in ("cpu", "gpu"):
        kustomization = yaml.safe_load(
            (KUSTOMIZE_ROOT / "overlays" / overlay / "kustomization.yaml").read_text()
        )
        (image,) = kustomization["images"]
        assert base_image.rsplit(":", 1)[0] == image["name"]
        rendered = server_container(render(overlay))["image"]
        assert rendered == f"{image.get('newName', image['name'])}:{image['newTag']}"


# ------------------------------------------------------------------ probes, port, metrics


def bentoml_system_routes() -> set[str]:
    """The paths BentoML's HTTP server answers for every service without a path prefix."""
    from bentoml._internal.server.base_app import BaseAppFactory

    class _Routes(BaseAppFactory):
        name = "routes"

    return {route.path for route in _Routes().get_system_routes()}


def bentoml_default_port() -> int:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.http.port.get()


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_probes_and_metrics_point_at_routes_and_the_port_bentoml_serves(overlay):
    docs = render(overlay)
    container = server_container(docs)
    (port,) = container["ports"]
    assert port["containerPort"] == bentoml_default_port() == ServeConfig().port
    routes = bentoml_system_routes()
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] == port["name"]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in routes
    (service_port,) = one(docs, "Service")["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]


def test_startup_probe_gives_model_loading_longer_on_gpu():
    def budget(overlay: str) -> int:
        probe = server_container(render(overlay))["startupProbe"]
        return probe["periodSeconds"] * probe["failureThreshold"]

    assert budget("cpu") >= 120
    assert budget("gpu") > budget("cpu")


def test_service_monitor_scrapes_the_service_metrics_port():
    docs = render("cpu-servicemonitor")
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] in bentoml_system_routes()


# ------------------------------------------------------------------ security and resources


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_container_runs_non_root_with_a_read_only_root_filesystem(overlay):
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = server_container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    # What BentoML writes at start-up (its home folders, the Prometheus multiprocess
    # folder, a socket folder from tempfile) lands on emptyDir volumes.
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs}
    assert {pod_env(container)["BENTOML_HOME"], "/tmp"} <= writable


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_cpu_and_memory_requests_and_limits_are_set_and_equal(overlay):
    resources = server_container(render(overlay))["resources"]
    for resource in ("cpu", "memory"):
        assert resource in resources["requests"] and resource in resources["limits"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS


# ------------------------------------------------------------------ service settings


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_every_slimserve_variable_is_a_setting_the_service_reads(overlay):
    names = {item["name"] for item in server_container(render(overlay))["env"]}
    known = set(ServeConfig().to_env())
    assert {n for n in names if n.startswith(ENV_PREFIX)} <= known


def test_cpu_pods_run_one_worker_per_cpu_of_the_limit():
    container = server_container(render("cpu"))
    config = pod_config("cpu")
    limit = math.ceil(cpu_quantity(container["resources"]["limits"]["cpu"]))
    assert config.worker_count == limit
    assert config.worker_count * config.thread_count == limit
    assert config.providers == "cpu"


def test_gpu_pods_run_one_worker_per_gpu_with_the_cpu_limit_as_threads():
    container = server_container(render("gpu"))
    config = pod_config("gpu")
    assert config.worker_count == container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert config.thread_count == math.ceil(cpu_quantity(container["resources"]["limits"]["cpu"]))
    assert (config.providers, config.strict) == ("cuda", True)


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_grace_period_covers_the_longest_request(overlay):
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = server_container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    config = pod_config(overlay)
    assert config.max_latency_ms / 1000 <= config.timeout_s
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + config.timeout_s


def _service_link_env(service: dict[str, Any]) -> dict[str, str]:
    """The variables Kubernetes injects for a Service when service links are on."""
    name = service["metadata"]["name"].upper().replace("-", "_")
    (port,) = service["spec"]["ports"]
    address = f"tcp://10.96.0.10:{port['port']}"
    return {
        f"{name}_SERVICE_HOST": "10.96.0.10",
        f"{name}_SERVICE_PORT": str(port["port"]),
        f"{name}_SERVICE_PORT_{port['name'].upper()}": str(port["port"]),
        f"{name}_PORT": address,
        f"{name}_PORT_{port['port']}_TCP": address,
    }


def test_service_links_are_off_since_they_would_set_slimserve_port():
    docs = render("cpu")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert one(docs, "Service")["metadata"]["name"] == "slimserve"
    with pytest.raises(SlimserveError, match="SLIMSERVE_PORT must be a whole number"):
        ServeConfig.from_env(_service_link_env(one(docs, "Service")))


# ------------------------------------------------------------------ scaling and rollout


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_autoscaler_budget_and_service_find_the_deployment_and_its_pods(overlay):
    docs = render(overlay)
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    target = one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(one(docs, "Service")["spec"]["selector"], pod_labels)
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] > one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count


def test_cpu_and_gpu_deployments_can_share_a_namespace():
    cpu, gpu = render("cpu"), render("gpu")
    assert {d["metadata"]["name"] for d in cpu}.isdisjoint(d["metadata"]["name"] for d in gpu)
    cpu_pods = one(cpu, "Deployment")["spec"]["template"]["metadata"]["labels"]
    gpu_pods = one(gpu, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget", "Deployment"):
        assert not selects(one(cpu, kind)["spec"]["selector"]["matchLabels"], gpu_pods)
        assert not selects(one(gpu, kind)["spec"]["selector"]["matchLabels"], cpu_pods)
    assert not selects(one(cpu, "Service")["spec"]["selector"], gpu_pods)


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_rollout_adds_a_ready_pod_before_removing_one(overlay):
    deployment = one(render(overlay), "Deployment")
    strategy = deployment["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert "readinessProbe" in server_container(render(overlay))


def test_gpu_overlay_requests_an_nvidia_gpu_on_gpu_nodes_and_cpu_does_not():
    gpu = one(render("gpu"), "Deployment")["spec"]["template"]["spec"]
    resources = server_container(render("gpu"))["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    cpu = server_container(render("cpu"))["resources"]
    assert "nvidia.com/gpu" not in cpu["limits"] and "nvidia.com/gpu" not in cpu["requests"]
    assert "tolerations" not in one(render("cpu"), "Deployment")["spec"]["template"]["spec"]


# ------------------------------------------------------------------ the pod's environment, served


@pytest.mark.slow
@pytest.mark.http
def test_the_cpu_pod_environment_serves_its_probes_metrics_and_worker_count(tiny_cnn_run, tmp_path):
    """`bentoml serve`, as the image runs it, with the Deployment's environment: the probe
    paths answer within the startup probe's budget, /metrics has the service's metrics,
    the worker count follows the CPU limit, and SIGTERM ends it within the grace period."""
    from rich.console import Console

    from export.pipeline import export_bundle

    export_bundle(
        tiny_cnn_run, out=tmp_path / "bundles", name="k8s", version="v1", variants=["fp32"], limit=200,
        console=Console(quiet=True),
    )  # fmt: skip
    docs = render("cpu")
    container, pod = server_container(docs), one(docs, "Deployment")["spec"]["template"]["spec"]
    env = pod_env(container)
    # In the pod the bundle comes from the Bento inside the image; here from the test store.
    env.pop("BENTOML_HOME")
    (tmp_path / "tmp").mkdir()
    env |= {"SLIMSERVE_BUNDLE": "k8s", "TMPDIR": str(tmp_path / "tmp")}
    port = free_port()
    command = [
        sys.executable, "-m", "bentoml", "serve", "service.service:Slimserve",
        "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(REPO_ROOT),
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    startup = container["startupProbe"]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=startup["timeoutSeconds"]) as client:
            deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
            while True:
                assert process.poll() is None, f"the server exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"not ready within the startup probe:\n{log.read_text()}"
                try:
                    if client.get(startup["httpGet"]["path"]).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            assert client.get(container["readinessProbe"]["httpGet"]["path"]).status_code == 200
            assert client.get(container["livenessProbe"]["httpGet"]["path"]).status_code == 200
            path = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"][
                "prometheus.io/path"
            ]
            metrics = client.get(path)
            assert metrics.status_code == 200 and "bentoml_service_request_in_progress" in metrics.text
            models = client.get("/models").json()
            limit = math.ceil(cpu_quantity(container["resources"]["limits"]["cpu"]))
            assert (models["workers"], models["threads_per_worker"]) == (limit, 1)
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)  # what the kubelet sends after the preStop hook
        process.wait(timeout=pod["terminationGracePeriodSeconds"])
        assert time.monotonic() - start < pod["terminationGracePeriodSeconds"]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
