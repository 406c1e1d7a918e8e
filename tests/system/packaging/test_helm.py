"""The Helm chart deploy/helm/tcpsleuth: its copies of the alert rules and dashboard
equal the tested originals; and, in the heavy tier (helm and prometheus-operator's Go
types are built from the Go module proxy, minutes on a new machine), `helm lint` is
clean, every built-in object it renders is valid for Kubernetes 1.30 to 1.37, and the
PrometheusRule and ServiceMonitor decode strictly into prometheus-operator's own types."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

CHART = REPO / "deploy" / "helm" / "tcpsleuth"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tcpsleuth.json"
PROMOP = REPO / "tests" / "promop"
HELM_MODULE = "helm.sh/helm/v4/cmd/helm@v4.3.2"
KUBERNETES = [f"1.{minor}.0" for minor in range(30, 38)]
BUILT_IN = {("apps/v1", "DaemonSet"), ("v1", "Service"), ("v1", "ConfigMap")}
OPERATOR = {
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
TOOLS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tcpsleuth" / "bin"
VALUES = {"default": [], "recorder": ["--set", "recorder.enabled=true"]}


def test_chart_files_are_the_tested_originals() -> None:
    """scripts/make_helm_files.py copies them; a change to either original without it
    fails here."""
    again = "changed without the chart's copy: run python3 scripts/make_helm_files.py"
    assert (CHART / "files" / "alerts.yml").read_bytes() == ALERTS.read_bytes(), again
    assert (CHART / "files" / "tcpsleuth.json").read_bytes() == DASHBOARD.read_bytes(), again


def _go_build(what: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
    subprocess.run(
        ["nice", "-n", "10", "go", *what],
        check=True,
        timeout=3600,
        env={**os.environ, **env},
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def helm() -> str:
    return built_helm()


def built_helm() -> str:
    """helm v4.3.2, built once from the Go module proxy into ~/.cache/tcpsleuth/bin."""
    built = TOOLS / "helm"
    if not built.exists():
        assert shutil.which("go"), "go is missing: the polyglot machine has it"
        _go_build(["install", HELM_MODULE], {"GOBIN": str(TOOLS)})
    version = subprocess.run(
        [str(built), "version", "--short"], capture_output=True, text=True, check=True
    ).stdout
    assert version.startswith("v4.3"), version  # `go install` sets no patch level
    return str(built)


@pytest.fixture(scope="module")
def promop(tmp_path_factory: pytest.TempPathFactory) -> str:
    binary = tmp_path_factory.mktemp("promop") / "promop"
    _go_build(["build", "-o", str(binary), "."], {}, cwd=PROMOP)
    return str(binary)


def render(helm: str, values: list[str]) -> list[dict]:
    text = subprocess.run(
        [helm, "template", "tcpsleuth", str(CHART), "--namespace", "monitoring", *values],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.mark.heavy
@pytest.mark.parametrize("values", VALUES)
def test_helm_lint_is_clean(helm: str, values: str) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), *VALUES[values]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.heavy
@pytest.mark.parametrize("values", VALUES)
def test_built_in_objects_are_valid_for_kubernetes_1_30_to_1_37(helm: str, values: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = render(helm, VALUES[values])
    kinds = {(d["apiVersion"], d["kind"]) for d in docs}
    assert kinds == BUILT_IN | OPERATOR
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in OPERATOR:
            continue
        for version in KUBERNETES:
            # a missing schema (SchemaNotFoundError) fails as loudly as an invalid object
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
    assert checked == 3 * len(KUBERNETES)
    [daemonset] = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == ({"exporter", "recorder"} if values == "recorder" else {"exporter"})
    for container in containers.values():
        assert container["securityContext"]["privileged"] is True
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/host/proc"]["readOnly"] is True and mounts["/sys"]["readOnly"] is True
        assert mounts["/run/netns"]["mountPropagation"] == "HostToContainer"


@pytest.mark.heavy
def test_an_invalid_object_is_refused(helm: str) -> None:
    """The validation above can fail: a misspelt field in the DaemonSet's pod."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    [daemonset] = [d for d in render(helm, []) if d["kind"] == "DaemonSet"]
    daemonset["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES[0], strict=True)


@pytest.mark.heavy
@pytest.mark.parametrize("values", VALUES)
def test_operator_objects_decode_strictly_and_carry_the_originals(
    helm: str, promop: str, values: str, tmp_path: Path
) -> None:
    docs = [d for d in render(helm, VALUES[values]) if (d["apiVersion"], d["kind"]) in OPERATOR]
    paths = []
    for number, doc in enumerate(docs):
        paths.append(tmp_path / f"{number}.json")
        paths[-1].write_text(json.dumps(doc))
    result = subprocess.run([promop, *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rules = yaml.safe_load(ALERTS.read_text())
    count = sum(len(group["rules"]) for group in rules["groups"])
    endpoints = 2 if values == "recorder" else 1
    assert sorted(result.stdout.splitlines()) == [
        f"PrometheusRule tcpsleuth groups={len(rules['groups'])} rules={count}",
        f"ServiceMonitor tcpsleuth endpoints={endpoints}",
    ]
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"] == rules
    [dashboard] = [d for d in render(helm, VALUES[values]) if d["kind"] == "ConfigMap"]
    assert json.loads(dashboard["data"]["tcpsleuth.json"]) == json.loads(DASHBOARD.read_text())


@pytest.mark.heavy
def test_the_decoder_refuses_an_unknown_field(helm: str, promop: str, tmp_path: Path) -> None:
    [monitor] = [d for d in render(helm, []) if d["kind"] == "ServiceMonitor"]
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    path = tmp_path / "monitor.json"
    path.write_text(json.dumps(monitor))
    result = subprocess.run([promop, str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert 'unknown field "intervall"' in result.stderr
