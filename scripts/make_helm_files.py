"""Copy the alert rules and the dashboard into the Helm chart, which reads no file outside
itself: deploy/prometheus/alerts.yml and deploy/grafana/tcpsleuth.json, checked where
they are (promtool, the dashboard tests), become deploy/helm/tcpsleuth/files/*.
tests/system/packaging/test_helm.py fails when the copies differ; run this after changing either."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHART_FILES = REPO / "deploy" / "helm" / "tcpsleuth" / "files"
SOURCES = {
    "alerts.yml": REPO / "deploy" / "prometheus" / "alerts.yml",
    "tcpsleuth.json": REPO / "deploy" / "grafana" / "tcpsleuth.json",
}


def main() -> None:
    CHART_FILES.mkdir(parents=True, exist_ok=True)
    for name, source in SOURCES.items():
        shutil.copyfile(source, CHART_FILES / name)
        print(f"{source.relative_to(REPO)} -> {(CHART_FILES / name).relative_to(REPO)}")


if __name__ == "__main__":
    main()
