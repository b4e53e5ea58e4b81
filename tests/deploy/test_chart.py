"""The Helm chart as Helm lints and renders it, validated against the Kubernetes and prometheus-operator schemas.

Every scenario in `SCENARIOS` is rendered by Helm's Go SDK; every object is validated strictly (unknown fields
are errors) against the Kubernetes JSON schemas of `KUBERNETES_VERSION`, or against the prometheus-operator
CRD models for ServiceMonitor and PrometheusRule.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.deploy.conftest import (
    ADAPTER_RULES,
    CHART,
    DASHBOARD,
    KUBERNETES_VERSION,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    Rendered,
    render,
)

BASE_KINDS = {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy"}


def _container(rendered: Rendered) -> dict[str, Any]:
    (container,) = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _settings(rendered: Rendered) -> dict[str, str]:
    # NOTE: the settings ConfigMap is named after the release; the dashboard's ends in "-dashboard".
    return rendered.one("ConfigMap", RELEASE)["data"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_helm_lint_strict_is_clean(name: str) -> None:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk missing: install the deploy extra")
    report = helm.lint(str(CHART), SCENARIOS[name], strict=True, kube_version=f"v{KUBERNETES_VERSION}.0")
    print(json.dumps(report, indent=1))
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); warnings (2) and errors (3) fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_manifest_validates_against_its_schema(scenario: tuple[str, Rendered]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    monitoring = pytest.importorskip("cloudcoil.models.prometheus_operator.v1")
    _, rendered = scenario
    assert rendered.objects
    for obj in rendered.objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            model = getattr(monitoring, obj["kind"]).model_validate(obj)
            # NOTE: the models ignore unknown fields; a lossless round trip proves there were none.
            assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj, obj["kind"]
        else:
            assert kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_each_scenario_renders_the_objects_it_asks_for() -> None:
    assert render().kinds() == BASE_KINDS | {"HorizontalPodAutoscaler"}
    assert render(SCENARIOS["gpu"]).kinds() == BASE_KINDS | {
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
    }
    assert render(SCENARIOS["pvc"]).kinds() == BASE_KINDS


def test_deployment_probes_security_and_shutdown() -> None:
    rendered = render()
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = _container(rendered)
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"
    # Loading, verifying (sha256) and warming the bundles must fit in the startup budget with room to spare.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 10000
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(_settings(rendered)["DEFENDED_GRACEFUL_SHUTDOWN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > pause + drain
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["image"].endswith(":0.1.0-cpu")


def test_too_short_grace_period_and_bad_values_are_refused() -> None:
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
        render({"terminationGracePeriodSeconds": 35})
    with pytest.raises(helm.HelmValuesError, match="provider"):
        render({"settings": {"provider": "tpu"}})
    with pytest.raises(helm.HelmValuesError, match="replicaCont"):
        render({"replicaCont": 3})
    with pytest.raises(helm.HelmRenderError, match="claimName"):
        render({"modelRepository": {"source": "pvc"}})


def test_settings_reach_the_service_as_its_environment_variables() -> None:
    from service.settings import Settings

    data = _settings(render({"settings": {"extra": {"batch_max_size": 32}}}))
    assert data["DEFENDED_BATCH_MAX_SIZE"] == "32"
    known = {f"DEFENDED_{name.upper()}" for name in Settings.model_fields}
    assert set(data) - {"DEFENDED_BATCH_MAX_SIZE"} <= known
    # The rendered values must parse as the service's own typed settings.
    env = {key.removeprefix("DEFENDED_").lower(): value for key, value in data.items() if key in known}
    assert Settings(**env).model_repository.as_posix() == data["DEFENDED_MODEL_REPOSITORY"]


def test_baked_model_repository_path_matches_the_dockerfile() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    paths = set(re.findall(r"DEFENDED_MODEL_REPOSITORY=(\S+)", dockerfile))
    assert paths == {_settings(render())["DEFENDED_MODEL_REPOSITORY"]}
    assert re.search(rf"COPY model_repository {re.escape(paths.pop())}\n", dockerfile)


def test_gpu_values_request_a_gpu_on_gpu_nodes() -> None:
    rendered = render(SCENARIOS["gpu"])
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = _container(rendered)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith(":0.1.0-gpu")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert _settings(rendered)["DEFENDED_PROVIDER"] == "cuda"


def test_hpa_custom_metric_is_the_one_the_adapter_rule_serves() -> None:
    hpa = render(SCENARIOS["gpu"]).one("HorizontalPodAutoscaler")
    assert "replicas" not in render(SCENARIOS["gpu"]).one("Deployment")["spec"]
    (pods_metric,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    (rule,) = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    assert pods_metric["metric"]["name"] == rule["name"]["as"]
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}


def test_service_monitor_scrapes_the_named_metrics_port() -> None:
    rendered = render(SCENARIOS["gpu"])
    ports = {p["name"]: p for p in rendered.one("Service")["spec"]["ports"]}
    assert ports["metrics"]["targetPort"] == "http"
    (endpoint,) = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    selector = rendered.one("ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= rendered.one("Service")["metadata"]["labels"].items()
    assert rendered.one("ServiceMonitor")["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_dashboard_ships_as_a_sidecar_configmap() -> None:
    configmap = render().one("ConfigMap", "-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = configmap["data"].values()
    assert json.loads(text) == json.loads(DASHBOARD.read_text())


def test_model_repository_volumes() -> None:
    pvc = render(SCENARIOS["pvc"])
    pod = pvc.one("Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "model-repository"]
    assert volume["persistentVolumeClaim"] == {"claimName": "bundles", "readOnly": True}
    assert _settings(pvc)["DEFENDED_MODEL_REPOSITORY"] == "/models"
    assert pod["containers"][0]["volumeMounts"][-1] == {
        "name": "model-repository",
        "mountPath": "/models",
        "readOnly": True,
    }
    assert pvc.one("Deployment")["spec"]["replicas"] == 2
    annotations = pvc.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    oci = render(SCENARIOS["oci-image"]).one("Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in oci["volumes"] if v["name"] == "model-repository"]
    assert volume["image"]["reference"] == "registry.example.com/bundles:1"
