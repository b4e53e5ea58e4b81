"""The Helm chart rendered by Helm's own Go SDK (helm-python-sdk), once per values scenario, and the tools."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.deploy import tools

CHART = REPO_ROOT / "helm" / "defended-inference"
RELEASE = "defended-inference"
NAMESPACE = "inference"
DASHBOARD = CHART / "files" / "dashboard.json"
ADAPTER_RULES = CHART / "files" / "prometheus-adapter-rules.yaml"
# NOTE: a recent Kubernetes release that kubernetes-validate ships schemas for; image volumes and the preStop
# sleep action the chart uses exist there.
KUBERNETES_VERSION = "1.35"

# Values scenarios: the defaults, the GPU example the docs install, and the model repository from a PVC.
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": yaml.safe_load((CHART / "ci" / "gpu-values.yaml").read_text()),
    "pvc": {
        "modelRepository": {"source": "pvc", "pvc": {"claimName": "bundles"}},
        "autoscaling": {"enabled": False},
        "metrics": {"podAnnotations": True},
    },
    "oci-image": {
        "modelRepository": {"source": "ociImage", "ociImage": {"reference": "registry.example.com/bundles:1"}}
    },
}


@dataclass(frozen=True)
class Rendered:
    """One rendered release: the manifests by template path, and the Kubernetes objects they hold."""

    templates: dict[str, str]

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [
            doc
            for path, text in sorted(self.templates.items())
            if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        (found,) = [
            o for o in self.objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)
        ]
        return found

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}


def render(values: dict[str, Any] | None = None) -> Rendered:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk missing: install the deploy extra")
    with helm.Chart.load(str(CHART)) as chart:
        return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE))


@pytest.fixture(scope="session", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[str, Rendered]:
    return request.param, render(SCENARIOS[request.param])


@pytest.fixture(scope="session")
def prometheus_binaries() -> tuple[str, str]:
    return tools.prometheus_binaries()


@pytest.fixture(scope="session")
def checkov() -> str:
    return tools.checkov_binary()


def write_manifests(rendered: Rendered, folder: Path) -> list[Path]:
    """Write each rendered template to its own file, as `helm template --output-dir` would."""
    paths = []
    for template, text in rendered.templates.items():
        if not template.endswith(".yaml") or not text.strip():
            continue
        path = folder / template
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return paths
