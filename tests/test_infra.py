"""infra/: no Docker engine or Kubernetes cluster runs here, so these files are parsed and
cross-checked: services, ports, environment wiring, secrets only from the environment, and the
seqrec config that points at the services must validate and agree with them."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def _k8s() -> list[dict]:
    docs = []
    for f in sorted((INFRA / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def test_compose_has_every_service_and_publishes_only_on_loopback():
    services = _compose()["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "prefect-worker", "dask-scheduler",
            "dask-worker"} <= services.keys()
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert services["dask-worker"]["deploy"]["replicas"] >= 2
    for name in ("mlflow", "prefect-worker", "dask-scheduler", "dask-worker"):
        assert services[name]["image"] == "seqrec:latest" and services[name]["build"]["dockerfile"] == "infra/Dockerfile"


def test_compose_secrets_come_from_the_environment():
    text = (INFRA / "docker-compose.yml").read_text()
    for key in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        for line in [ln for ln in text.splitlines() if re.match(rf"\s*{key}:", ln)]:
            assert "${" in line, f"literal secret: {line.strip()}"
    for doc in _k8s():
        assert doc["kind"] != "Secret", "secrets are created with kubectl, never committed"


def test_seqrec_cluster_config_points_at_the_compose_services():
    from flows.config import load_config

    cfg = load_config(INFRA / "seqrec-cluster.yaml")
    services = _compose()["services"]
    host, port = re.match(r"tcp://([^:]+):(\d+)", cfg.dask.address).groups()
    assert host in services and f"--port {port}" in services[host]["command"]
    assert f"tcp://{host}:{port}" in services["dask-worker"]["command"]
    m = re.match(r"http://([^:]+):(\d+)", cfg.tracking.tracking_uri)
    assert m.group(1) in services and f"--port {m.group(2)}" in services["mlflow"]["command"]
    api = services["prefect-worker"]["environment"]["PREFECT_API_URL"]
    h, p = re.match(r"http://([^:]+):(\d+)/api", api).groups()
    assert h in services and f"--port {p}" in services[h]["command"]
    # workers and the flow share the work directory (registry lock, data versions)
    for name in ("prefect-worker", "dask-worker", "dask-scheduler", "mlflow"):
        assert "seqrec-work:/work" in services[name]["volumes"]
    assert cfg.tracking.registry_dir.startswith("/work")
    # the MLflow server serves artifacts from MinIO, so runners need no S3 credentials
    assert "--serve-artifacts" in services["mlflow"]["command"]
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"].startswith("http://minio:")


def test_k8s_manifests_wire_dask_prefect_and_mlflow():
    from flows.config import validate_config

    docs = _k8s()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("DaskCluster", "seqrec-dask") in kinds and ("Deployment", "prefect-worker") in kinds
    assert ("Deployment", "mlflow") in kinds and ("Service", "mlflow") in kinds
    assert all(d["metadata"].get("namespace", "seqrec") == "seqrec" for d in docs if d["kind"] != "Namespace")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    cfg = validate_config(yaml.safe_load(cm["data"]["seqrec.yaml"]))
    dask = next(d for d in docs if d["kind"] == "DaskCluster")
    # the operator names the scheduler Service <cluster>-scheduler
    host, port = re.match(r"tcp://([^.:]+)\.seqrec\.svc:(\d+)", cfg.dask.address).groups()
    assert host == f"{dask['metadata']['name']}-scheduler"
    assert int(port) in [p["port"] for p in dask["spec"]["scheduler"]["service"]["ports"]]
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow")
    assert cfg.tracking.tracking_uri == f"http://mlflow.seqrec.svc:{svc['spec']['ports'][0]['port']}"
    worker = dask["spec"]["worker"]["spec"]
    assert worker["volumes"][0]["persistentVolumeClaim"]["claimName"] == "seqrec-work"
    assert any(e["name"] == "PREFECT_API_URL" for e in worker["containers"][0]["env"])
    pw = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "prefect-worker")
    assert pw["spec"]["template"]["spec"]["serviceAccountName"] == "prefect-worker"
    assert "kubernetes" in pw["spec"]["template"]["spec"]["containers"][0]["args"]


def test_dockerfile_installs_the_pinned_project():
    df = (INFRA / "Dockerfile").read_text()
    assert 'pip install -e ".[cluster]"' in df and "USER seqrec" in df
    for pkg in ("seqrec", "flows", "tasks", "models", "validation"):
        assert f"COPY {pkg} ./{pkg}" in df
    assert "torch==2.13.0" in (REPO / "pyproject.toml").read_text()
