"""infra/: no Docker engine or Kubernetes cluster runs here, so these files are parsed and
cross-checked: services, ports, environment wiring, secrets only from the environment, and the
seqrec config that points at the services must validate and agree with them. The hardening is
checked the same way: pinned images, non-root users, read-only root filesystems, dropped
capabilities, resource requests and limits, NetworkPolicies that admit only the pipeline pods, every
referenced host defined, and database passwords URL-encoded wherever a URI is built from them (the
URI builders are run with a password that breaks a raw URI)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PROJECT_IMAGE = f"seqrec:{VERSION}"
# a password that a raw postgresql://user:${POSTGRES_PASSWORD}@host/db cannot carry
NASTY = "p@ss:w/rd?#%2F+ &x"
SECRETS = {"POSTGRES_PASSWORD": NASTY, "MINIO_ROOT_USER": "seqrec-minio", "MINIO_ROOT_PASSWORD": "m1n!o/secret"}
# containers allowed a writable root filesystem, "pod/container" -> why (none needs one today)
WRITABLE_ROOT: dict[str, str] = {}
# compose services allowed to run as root -> why
ROOT_SERVICES = {"minio-volume-owner": "chowns the fresh, root-owned minio-data volume for the non-root MinIO; "
                                       "CAP_CHOWN only, no network"}
# the only pods that may reach MLflow, the Prefect API and Dask (names as in _pods())
PIPELINE = {"prefect-worker", "flow-run", "seqrec-dask-scheduler", "seqrec-dask-worker"}
# images whose releases are numbered MAJOR.MINOR (postgres 16.4 is a release; python 3.11 is not)
TWO_PART_VERSIONS = {"postgres"}
K8S_SUFFIXES = (".seqrec.svc.cluster.local", ".seqrec.svc")
URL = re.compile(r"\b([a-z][a-z0-9+.-]*)://(?:[^@/\s\"']*@)?([A-Za-z0-9_.-]+)(?::(\d+))?")


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def _k8s() -> list[dict]:
    docs = []
    for f in sorted((INFRA / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def _cmd(svc: dict) -> str:
    c = svc.get("command", "")
    return " ".join(c) if isinstance(c, list) else c


def _uid(user: str) -> int:
    assert re.fullmatch(r"\d+(:\d+)?", str(user)), f"user {user!r} is not a numeric uid[:gid]"
    return int(str(user).split(":")[0])


def _dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\S+)", (INFRA / "Dockerfile").read_text(), re.M)
    assert users, "the Dockerfile sets no USER"
    return _uid(users[-1])


def _interpolate(value: str, env: dict[str, str]) -> str:
    """compose's ${VAR}, ${VAR:?msg}, ${VAR:-default} against env."""
    return re.sub(r"\$\{(\w+)(?::?[-?][^}]*)?\}", lambda m: env[m.group(1)], str(value))


def _job_template() -> dict:
    return json.loads((INFRA / "prefect-k8s-job-template.json").read_text())


def _flow_run_job() -> dict:
    """The Job the Kubernetes worker creates for a flow run, with the pool's default variables,
    rendered by Prefect's own templating."""
    from prefect.utilities.templating import apply_values

    t = _job_template()
    values = {k: v["default"] for k, v in t["variables"]["properties"].items() if v.get("default") is not None}
    values |= {"name": "seqrec-training-abc", "command": "prefect flow-run execute", "labels": {}}
    job = apply_values(t["job_configuration"], values)["job_manifest"]
    c = job["spec"]["template"]["spec"]["containers"][0]  # as the worker does: env dict -> list, args split
    c["env"] = [{"name": k, "value": v} for k, v in c["env"].items()]
    c["args"] = c["args"].split()
    return job


def _pods() -> dict[str, tuple[dict, dict]]:
    """Every pod the manifests create: name -> (labels, pod spec)."""
    pods = {}
    for d in _k8s():
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            t = d["spec"]["template"]
            pods[d["metadata"]["name"]] = (t["metadata"]["labels"], t["spec"])
        elif d["kind"] == "DaskCluster":  # the operator's pod labels (dask-kubernetes)
            name = d["metadata"]["name"]
            for comp in ("scheduler", "worker"):
                pods[f"{name}-{comp}"] = ({"dask.org/cluster-name": name, "dask.org/component": comp},
                                          d["spec"][comp]["spec"])
    job = _flow_run_job()
    pods["flow-run"] = (job["spec"]["template"]["metadata"]["labels"], job["spec"]["template"]["spec"])
    return pods


def _services() -> dict[str, set[int]]:
    """k8s Service name -> ports, with the scheduler Service the Dask operator creates."""
    out = {}
    for d in _k8s():
        if d["kind"] == "Service":
            out[d["metadata"]["name"]] = {p["port"] for p in d["spec"]["ports"]}
        elif d["kind"] == "DaskCluster":
            out[f"{d['metadata']['name']}-scheduler"] = {p["port"] for p in d["spec"]["scheduler"]["service"]["ports"]}
    return out


def _containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return False  # untagged (the colon belonged to a registry port)
    if re.match(r"RELEASE\.\d{4}-\d\d-\d\dT", tag):  # MinIO's release tags
        return True
    # a full release: MAJOR.MINOR.PATCH, or MAJOR.MINOR where that is how upstream numbers releases
    return bool(re.match(r"\d+\.\d+\.\d+\b", tag) or (name in TWO_PART_VERSIONS and re.fullmatch(r"\d+\.\d+", tag)))


def _quantity(q) -> float:
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    num, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(q)).groups()
    return float(num) * units.get(unit, 1)


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for e in selector.get("matchExpressions", []):
        has, val = e["key"] in labels, labels.get(e["key"])
        ok &= {"In": has and val in e.get("values", []), "NotIn": not has or val not in e.get("values", []),
               "Exists": has, "DoesNotExist": not has}[e["operator"]]
    return ok


def _sources(target: str, port: int | None = None) -> set[str]:
    """Who may open connections to pod `target` (on `port`, or on any port): pod names of this
    namespace, 'ns:<labels>' for other namespaces, 'ANY' for everyone."""
    pods = _pods()
    labels = pods[target][0]
    policies = [d for d in _k8s() if d["kind"] == "NetworkPolicy" and _selects(d["spec"]["podSelector"], labels)
                and "Ingress" in d["spec"].get("policyTypes", ["Ingress"])]
    assert policies, f"no NetworkPolicy selects {target}: its ingress is open"
    out: set[str] = set()
    for pol in policies:
        for rule in pol["spec"].get("ingress", []):
            if port is not None and rule.get("ports") and port not in [p.get("port") for p in rule["ports"]]:
                continue
            if not rule.get("from"):
                out.add("ANY")
            for peer in rule.get("from", []):
                if "ipBlock" in peer:
                    out.add("ANY")
                elif "namespaceSelector" in peer:
                    out.add(f"ns:{peer['namespaceSelector']}")
                else:
                    out |= {name for name, (lab, _) in pods.items() if _selects(peer["podSelector"], lab)}
    return out


# --- the wiring -------------------------------------------------------------------------------


def test_compose_has_every_service_and_publishes_only_on_loopback():
    services = _compose()["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "prefect-worker", "dask-scheduler",
            "dask-worker"} <= services.keys()
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert services["dask-worker"]["deploy"]["replicas"] >= 2
    for name in ("mlflow", "prefect-worker", "dask-scheduler", "dask-worker"):
        assert services[name]["image"] == PROJECT_IMAGE and services[name]["build"]["dockerfile"] == "infra/Dockerfile"


def test_compose_secrets_come_from_the_environment():
    text = (INFRA / "docker-compose.yml").read_text()
    for key in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY", "PREFECT_SERVER_DATABASE_PASSWORD"):
        for line in [ln for ln in text.splitlines() if re.match(rf"\s*{key}:", ln)]:
            assert "${" in line, f"literal secret: {line.strip()}"
    for doc in _k8s():
        assert doc["kind"] != "Secret", "secrets are created with kubectl, never committed"


def test_k8s_secrets_come_from_the_documented_secret_by_key():
    """Secret values reach pods only through secretKeyRef, from the Secret and keys that the
    kubectl command in namespace.yaml creates."""
    howto = (INFRA / "k8s" / "namespace.yaml").read_text()
    created = set(re.findall(r"--from-literal=(\w+)=", howto))
    assert "create secret generic seqrec-secrets" in howto and created == set(SECRETS)
    used = set()
    for name, (_, spec) in _pods().items():
        assert not any("envFrom" in c for c in _containers(spec)), f"{name}: envFrom hands a pod every key"
        for c in _containers(spec):
            for e in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER", e["name"]):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    assert ref and ref["name"] == "seqrec-secrets", f"{name}/{c['name']}: {e['name']} is not from the Secret"
                    used.add(ref["key"])
    assert used == created


def test_seqrec_cluster_config_points_at_the_compose_services():
    from flows.config import load_config

    cfg = load_config(INFRA / "seqrec-cluster.yaml")
    services = _compose()["services"]
    host, port = re.match(r"tcp://([^:]+):(\d+)", cfg.dask.address).groups()
    assert host in services and f"--port {port}" in _cmd(services[host])
    assert f"tcp://{host}:{port}" in _cmd(services["dask-worker"])
    m = re.match(r"http://([^:]+):(\d+)", cfg.tracking.tracking_uri)
    assert m.group(1) in services and f"--port {m.group(2)}" in _cmd(services["mlflow"])
    api = services["prefect-worker"]["environment"]["PREFECT_API_URL"]
    h, p = re.match(r"http://([^:]+):(\d+)/api", api).groups()
    assert h in services and f"--port {p}" in _cmd(services[h])
    # workers and the flow share the work directory (registry lock, data versions)
    for name in ("prefect-worker", "dask-worker", "dask-scheduler", "mlflow"):
        assert "seqrec-work:/work" in services[name]["volumes"]
    assert cfg.tracking.registry_dir.startswith("/work")
    # the MLflow server serves artifacts from MinIO, so runners need no S3 credentials
    assert "--serve-artifacts" in _cmd(services["mlflow"])
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"].startswith("http://minio:")


def test_k8s_manifests_wire_dask_prefect_and_mlflow():
    from flows.config import validate_config

    docs = _k8s()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("DaskCluster", "seqrec-dask") in kinds and ("Deployment", "prefect-worker") in kinds
    assert ("Deployment", "mlflow") in kinds and ("Service", "mlflow") in kinds
    for kind, name in (("Deployment", "prefect-server"), ("StatefulSet", "postgres"), ("StatefulSet", "minio")):
        assert (kind, name) in kinds and ("Service", name) in kinds
    assert all(d["metadata"].get("namespace", "seqrec") == "seqrec" for d in docs if d["kind"] != "Namespace")
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "seqrec-config")
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
    # flow-run Jobs mount the shared work directory too; Postgres initialises the same databases as compose
    job = _flow_run_job()["spec"]["template"]["spec"]
    assert {"name": "work", "persistentVolumeClaim": {"claimName": "seqrec-work"}} in job["volumes"]
    init = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "postgres-init")
    assert init["data"]["init.sql"] == (INFRA / "postgres-init.sql").read_text()


def test_dockerfile_installs_the_pinned_project():
    df = (INFRA / "Dockerfile").read_text()
    assert 'pip install -e ".[cluster]"' in df
    for pkg in ("seqrec", "flows", "tasks", "models", "validation"):
        assert f"COPY {pkg} ./{pkg}" in df
    assert "COPY infra/with_pg_uri.py ./infra/with_pg_uri.py" in df  # WORKDIR /app: /app/infra/with_pg_uri.py
    assert re.search(r"^WORKDIR /app$", df, re.M)
    assert "torch==2.13.0" in (REPO / "pyproject.toml").read_text()
    assert _dockerfile_uid() > 0, "the image runs as root"
    # the uid owns /work, the directory every seqrec container writes
    assert re.search(rf"chown {_dockerfile_uid()}(:\d+)? /work", df)


# --- hardening --------------------------------------------------------------------------------


def test_images_are_pinned_and_the_project_image_is_the_project_version():
    images = {f"compose/{n}": s["image"] for n, s in _compose()["services"].items()}
    assert all(images.values()), "a compose service without an image"
    for name, (_, spec) in _pods().items():
        images |= {f"k8s/{name}/{c['name']}": c["image"] for c in _containers(spec)}
    for i, base in enumerate(re.findall(r"^FROM\s+(\S+)", (INFRA / "Dockerfile").read_text(), re.M)):
        images[f"Dockerfile/FROM{i}"] = base
    assert len(images) > 15
    for where, image in images.items():
        assert _pinned(image), f"{where}: {image} is not pinned to a version tag"
        if image.split(":")[0] == "seqrec":
            assert image == PROJECT_IMAGE, f"{where}: {image} is not the project version {VERSION}"
    assert sum(i == PROJECT_IMAGE for i in images.values()) >= 9
    # and the build comment tags the image the same way
    assert f"-t {PROJECT_IMAGE} " in (INFRA / "Dockerfile").read_text()


def test_pinned_rejects_floating_tags():
    for bad in ("postgres", "postgres:latest", "postgres:16", "quay.io/minio/minio", "localhost:5000/seqrec",
                "minio/minio:latest", "python:3.11-slim", "python:3-slim", "prefecthq/prefect:3-python3.11",
                "busybox:stable"):
        assert not _pinned(bad), bad
    for good in ("postgres:16.4", "quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z", "seqrec:0.1.0",
                 "prefecthq/prefect:3.8.8-python3.11", "localhost:5000/seqrec:0.1.0", "busybox@sha256:" + "0" * 64,
                 "python:3.11.13-slim-bookworm"):
        assert _pinned(good), good


def test_compose_services_run_unprivileged_read_only_and_limited():
    services = _compose()["services"]
    uid = _dockerfile_uid()
    for name, svc in services.items():
        if name in ROOT_SERVICES:
            assert _uid(svc["user"]) == 0 and svc.get("cap_add") == ["CHOWN"] and svc.get("network_mode") == "none"
        else:
            assert "user" in svc and _uid(svc["user"]) > 0, f"{name} runs as root"
            assert not svc.get("cap_add"), f"{name} adds capabilities"
        if svc["image"] == PROJECT_IMAGE:
            assert _uid(svc["user"]) == uid, f"{name} runs as {svc['user']}, the image's user is {uid}"
            assert {"/tmp", "/home/seqrec"} <= set(svc["tmpfs"]), f"{name}: no writable /tmp and $HOME"
        assert svc.get("read_only") is True or name in WRITABLE_ROOT, f"{name} has a writable root filesystem"
        assert svc.get("cap_drop") == ["ALL"], f"{name} keeps its capabilities"
        assert "no-new-privileges:true" in svc.get("security_opt", []), f"{name} may gain privileges"
        assert not svc.get("privileged"), name
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert {"cpus", "memory"} <= limits.keys(), f"{name} has no CPU/memory limit"
    # the Dask worker's own memory limit sits below its container's
    w = services["dask-worker"]
    own = _quantity(re.search(r"--memory-limit (\S+)", _cmd(w)).group(1).removesuffix("B"))
    assert own < _quantity(w["deploy"]["resources"]["limits"]["memory"].replace("G", "Gi"))


def test_k8s_pods_run_unprivileged_read_only_and_with_requests_and_limits():
    uid = _dockerfile_uid()
    pods = _pods()
    assert {"mlflow", "prefect-server", "postgres", "minio", "prefect-worker", "seqrec-dask-scheduler",
            "seqrec-dask-worker", "flow-run"} <= pods.keys()
    for pod, (_, spec) in pods.items():
        # only the Prefect worker talks to the Kubernetes API; no pod gets every Service as variables
        assert spec.get("automountServiceAccountToken") is (None if pod == "prefect-worker" else False), pod
        assert spec.get("enableServiceLinks") is False, pod
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), pod
        psc = spec.get("securityContext", {})
        mounts_of = {v["name"]: v for v in spec.get("volumes", [])}
        for c in _containers(spec):
            where = f"{pod}/{c['name']}"
            sc = {**{k: psc[k] for k in ("runAsNonRoot", "runAsUser", "seccompProfile") if k in psc},
                  **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
            assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, f"{where}: runAsUser"
            assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{where}: seccomp"
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not dropped"
            assert not sc.get("capabilities", {}).get("add") and not sc.get("privileged"), where
            if c["image"] == PROJECT_IMAGE:
                assert sc["runAsUser"] == uid, f"{where}: runs as {sc['runAsUser']}, the image's user is {uid}"
            if sc.get("readOnlyRootFilesystem") is not True:
                assert where in WRITABLE_ROOT, f"{where}: writable root filesystem without a reason"
            else:  # a read-only root works only with somewhere to write
                mounts = {m["mountPath"]: mounts_of.get(m["name"], {}) for m in c.get("volumeMounts", [])}
                assert "emptyDir" in mounts.get("/tmp", {}), f"{where}: read-only root without an emptyDir /tmp"
                if c["image"] == PROJECT_IMAGE:
                    assert "emptyDir" in mounts.get("/home/seqrec", {}), f"{where}: read-only root without a writable $HOME"
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= res.get(kind, {}).keys(), f"{where}: no {kind} for cpu and memory"
            for r in ("cpu", "memory"):
                assert 0 < _quantity(res["requests"][r]) <= _quantity(res["limits"][r]), f"{where}: {r} request > limit"
            if m := re.search(r"--memory-limit (\d+)GB", " ".join(c.get("args", []))):
                assert int(m.group(1)) * 1e9 < _quantity(res["limits"]["memory"]), f"{where}: limit below --memory-limit"
    ns = next(d for d in _k8s() if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_network_policies_admit_only_the_pipeline():
    pols = [d for d in _k8s() if d["kind"] == "NetworkPolicy"]
    assert any(p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")
               for p in pols), "no default-deny ingress policy"
    pods = _pods()
    # the pipeline labels name real pods, and the protected servers are not among them
    assert PIPELINE <= pods.keys()
    assert _sources("mlflow") == PIPELINE and _sources("mlflow", 5000) == PIPELINE
    assert _sources("prefect-server") == PIPELINE and _sources("prefect-server", 4200) == PIPELINE
    assert _sources("postgres") == _sources("postgres", 5432) == {"mlflow", "prefect-server"}
    assert _sources("minio") == _sources("minio", 9000) == {"mlflow"}
    assert _sources("minio", 9001) == set()  # the console: kubectl port-forward only
    for comp in ("scheduler", "worker"):
        inside = {s for s in _sources(f"seqrec-dask-{comp}") if not s.startswith("ns:")}
        assert inside == PIPELINE, comp
    outside = {s for s in _sources("seqrec-dask-scheduler") if s.startswith("ns:")}
    assert outside == {"ns:{'matchLabels': {'kubernetes.io/metadata.name': 'dask-operator'}}"}
    assert "-n dask-operator" in (INFRA / "k8s" / "dask-cluster.yaml").read_text()
    # the servers' ports in the policies are the ports the containers listen on
    for target, port in (("mlflow", 5000), ("prefect-server", 4200), ("postgres", 5432), ("minio", 9000)):
        assert port in [p["containerPort"] for c in pods[target][1]["containers"] for p in c.get("ports", [])]


def test_every_referenced_host_is_a_defined_service():
    # Kubernetes: URLs and *_HOST/*_PORT in env, commands, args and the seqrec ConfigMap
    services = _services()
    for d in _k8s():
        if d["kind"] == "Service":  # and every Service is backed by a pod
            assert any(_selects({"matchLabels": d["spec"]["selector"]}, lab) for lab, _ in _pods().values()), d
    refs: list[tuple[str, str]] = []
    for pod, (_, spec) in _pods().items():
        for c in _containers(spec):
            env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
            refs += [(f"{pod}/{k}", v) for k, v in env.items()]
            refs += [(f"{pod}/args", " ".join(c.get("command", []) + c.get("args", [])))]
            for k, host in env.items():
                if k.endswith("_HOST"):
                    port = env.get(k.removesuffix("HOST") + "PORT", "")
                    refs.append((f"{pod}/{k}", f"tcp://{host}:{port}" if port else f"tcp://{host}"))
    refs += [(f"configmap/{d['metadata']['name']}", v) for d in _k8s() if d["kind"] == "ConfigMap" for v in d["data"].values()]
    checked = 0
    for where, text in refs:
        for scheme, host, port in URL.findall(text):
            if scheme == "s3":
                continue  # a bucket, not a host
            if host == "127.0.0.1" and where.endswith("UI_API_URL"):
                continue  # the browser's address, through kubectl port-forward
            name = next((host.removesuffix(s) for s in K8S_SUFFIXES if host.endswith(s)), host)
            assert "." not in name and name in services, f"{where}: {host} is not a Service in infra/k8s"
            assert not port or int(port) in services[name], f"{where}: {name} has no port {port}"
            checked += 1
    assert checked >= 10

    # compose: URLs and *_HOST/*_PORT in environments and commands; loopback only where published
    compose = _compose()["services"]
    published = {int(p.split(":")[1]) for s in compose.values() for p in s.get("ports", [])}

    def listens(svc: dict) -> set[int]:
        ports = {int(p) for p in re.findall(r"--(?:port|address)[ =]:?(\d+)", _cmd(svc))}
        return ports | ({5432} if svc["image"].startswith("postgres:") else set())

    checked = 0
    cluster_cfg = (INFRA / "seqrec-cluster.yaml").read_text()  # the seqrec config runs inside the compose network
    for name, svc in [*compose.items(), ("seqrec-cluster.yaml", {"command": cluster_cfg})]:
        env = {k: str(v) for k, v in svc.get("environment", {}).items()}
        texts = [(k, v) for k, v in env.items()] + [("command", _cmd(svc))]
        texts += [(k, f"tcp://{v}:{env.get(k.removesuffix('HOST') + 'PORT', '')}".rstrip(":"))
                  for k, v in env.items() if k.endswith("_HOST")]
        for key, text in texts:
            for scheme, host, port in URL.findall(text):
                if scheme == "s3":
                    continue
                if host == "127.0.0.1":
                    assert key.endswith("UI_API_URL") and int(port) in published, f"{name}/{key}: {text}"
                    continue
                assert host in compose, f"{name}/{key}: {host} is not a compose service"
                assert not port or int(port) in listens(compose[host]), f"{name}/{key}: {host} does not listen on {port}"
                checked += 1
        deps = svc.get("depends_on", [])
        assert set(deps) <= compose.keys(), f"{name} depends on an undefined service"
    assert checked >= 13


def test_database_passwords_are_url_encoded_in_every_uri():
    # a raw password does not survive a URI: this is what the rest of the test guards against
    from sqlalchemy.engine import make_url

    with pytest.raises(ValueError):
        make_url(f"postgresql://seqrec:{NASTY}@postgres:5432/mlflow")
    # no URI in infra/ carries a password, unless it is a variable that holds the encoded one
    userinfo = re.compile(r"\b[a-z][a-z0-9+.-]*://([^/@\s\"']+):([^@\s\"']+)@")
    # (with_pg_uri.py, the encoder, spells the URI's shape; it is run below)
    files = [p for p in INFRA.rglob("*") if p.is_file() and p.suffix in (".yml", ".yaml", ".json", ".py", "")
             and p.name != "with_pg_uri.py"]
    assert len(files) >= 10
    for f in files:
        for user, password in userinfo.findall(f.read_text()):
            assert re.fullmatch(r"\$\{?\w*URLENCODED\w*\}?", password), f"{f.name}: raw password {password!r} in a URI"
    # and no server is handed a hand-made one: Prefect's connection URL and MLflow's --backend-store-uri
    # come from the builders checked below
    for name, svc in _compose()["services"].items():
        assert "--backend-store-uri" not in _cmd(svc), name
        assert not any(k.endswith("DATABASE_CONNECTION_URL") for k in svc.get("environment", {})), name
    for pod, (_, spec) in _pods().items():
        for c in _containers(spec):
            assert "--backend-store-uri" not in c.get("command", []) + c.get("args", []), pod
            assert not any(e["name"].endswith("DATABASE_CONNECTION_URL") for e in c.get("env", [])), pod


def _run_with_pg_uri(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, str(INFRA / "with_pg_uri.py"), "MLFLOW_BACKEND_STORE_URI",
                          sys.executable, "-c", "import os; print(os.environ['MLFLOW_BACKEND_STORE_URI'])"],
                         env={"PATH": os.environ.get("PATH", ""), **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_mlflow_gets_its_backend_uri_with_the_password_encoded():
    from sqlalchemy.engine import make_url

    init_sql = (INFRA / "postgres-init.sql").read_text()
    compose = _compose()["services"]
    mlflow_pod = _pods()["mlflow"][1]["containers"][0]
    k8s_env = {e["name"]: e.get("value") or SECRETS[e["valueFrom"]["secretKeyRef"]["key"]] for e in mlflow_pod["env"]}
    compose_env = {k: _interpolate(v, SECRETS) for k, v in compose["mlflow"]["environment"].items()}
    for where, cmd, env, pg_host in (("compose", _cmd(compose["mlflow"]).split(), compose_env, "postgres"),
                                     ("k8s", mlflow_pod["command"], k8s_env, "postgres.seqrec.svc")):
        assert cmd[:5] == ["python", "/app/infra/with_pg_uri.py", "MLFLOW_BACKEND_STORE_URI", "mlflow", "server"], where
        uri = _run_with_pg_uri(env)
        url = make_url(uri)
        assert url.password == NASTY and url.username == "seqrec", where
        # and a valid URI for any parser, not only SQLAlchemy's (a raw / would end the authority)
        parts = urlsplit(uri)
        assert unquote(parts.password) == NASTY and parts.hostname == pg_host and parts.path == "/mlflow", where
        assert (url.host, url.port) == (pg_host, 5432), where
        assert f"CREATE DATABASE {url.database} OWNER {url.username}" in init_sql, where
    # without the password the wrapper refuses, rather than starting MLflow on another store
    with pytest.raises(subprocess.CalledProcessError) as e:
        _run_with_pg_uri({k: v for k, v in compose_env.items() if k != "POSTGRES_PASSWORD"})
    assert "POSTGRES_PASSWORD is not set" in e.value.stderr


def test_prefect_server_builds_its_database_url_with_the_password_encoded(monkeypatch, tmp_path):
    """The Prefect server gets host, user, password, ... separately; Prefect (the version the
    image pins) assembles the URL with SQLAlchemy. Checked with the installed Prefect."""
    import prefect
    from prefect.settings import Settings
    from sqlalchemy.engine import make_url

    compose = _compose()["services"]
    pg = compose["postgres"]["environment"]
    pod = _pods()["prefect-server"][1]["containers"][0]
    assert compose["prefect-server"]["image"] == pod["image"]
    assert pod["image"].startswith(f"prefecthq/prefect:{prefect.__version__}-")
    k8s_env = {e["name"]: e.get("value") or SECRETS[e["valueFrom"]["secretKeyRef"]["key"]] for e in pod["env"]}
    compose_env = {k: _interpolate(v, SECRETS) for k, v in compose["prefect-server"]["environment"].items()}
    for key in [k for k in os.environ if k.startswith(("PREFECT_SERVER_DATABASE", "PREFECT_API_DATABASE"))]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env / prefect.toml of the checkout
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "profiles.toml"))
    for where, env, pg_host in (("compose", compose_env, "postgres"), ("k8s", k8s_env, "postgres.seqrec.svc")):
        db = {k: v for k, v in env.items() if k.startswith("PREFECT_SERVER_DATABASE_")}
        assert db["PREFECT_SERVER_DATABASE_PASSWORD"] == NASTY, where
        with monkeypatch.context() as m:
            for k, v in db.items():
                m.setenv(k, v)
            url = make_url(Settings().server.database.connection_url.get_secret_value())
        assert url.drivername == "postgresql+asyncpg" and url.password == NASTY, where
        assert (url.host, url.port, url.username, url.database) == (pg_host, 5432, pg["POSTGRES_USER"], pg["POSTGRES_DB"]), where


def test_no_wildcard_bind_outside_container_commands():
    """0.0.0.0 only where a server binds inside its container (compose/k8s commands); never in a
    config a user may run elsewhere, nor in an environment or ConfigMap."""
    from flows.config import load_config

    for f in ("seqrec-cluster.yaml", "prefect.yaml", "prefect-k8s-job-template.json", "Dockerfile", "with_pg_uri.py"):
        assert "0.0.0.0" not in (INFRA / f).read_text(), f
    assert load_config(INFRA / "seqrec-cluster.yaml").server.host not in ("0.0.0.0", "::")
    for name, svc in _compose()["services"].items():
        assert not any("0.0.0.0" in str(v) for v in svc.get("environment", {}).values()), name
        assert not any(str(p).startswith("0.0.0.0") for p in svc.get("ports", [])), name
    for pod, (_, spec) in _pods().items():
        assert not any("0.0.0.0" in str(e.get("value", "")) for c in _containers(spec) for e in c.get("env", [])), pod
    for d in _k8s():
        if d["kind"] == "ConfigMap":
            assert "0.0.0.0" not in str(d["data"]), d["metadata"]["name"]
