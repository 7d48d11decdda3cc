"""MLflow tracking and registration.

One MLflow run per training flow run: the flattened config as params, per-epoch metrics (step =
epoch), final validation/test/auxiliary/baseline metrics, artifacts (config, data-quality report,
per-user metrics, training curve, run summary; the A/B report is added by the compare stage) and
tags (data version, code commit, Prefect flow-run id, dataset counts). The model is logged as a
models-from-code pyfunc with its bundle, code, explicit pip requirements, signature and input
example, registered under `tracking.model_name`, and the new version gets alias `challenger`. A
baseline that becomes the first champion (tasks.registry.baseline_champion) is logged the same way in
a child run, with the evaluation's metrics of that baseline (`log_and_register_baseline`).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from seqrec.errors import ConfigError, SeqrecError
from seqrec.fsutil import file_digest

REPO = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("seqrec", "models", "tasks")


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db; "
                                                       "no password here (config ends up in MLflow params)")
    artifact_location: str | None = Field(None, description="artifact root of a new experiment (default <workdir>/mlartifacts)")
    experiment: str = "seqrec"
    model_name: str = Field("seqrec", min_length=1)
    registry_dir: str | None = Field(None, description="promotion log + lock; default next to the SQLite store; "
                                                       "required (shared by all runners) for any other store")
    lock_timeout_s: float = Field(1800, gt=0, description="wait this long for another run's compare + promote")
    http_retries: int = Field(3, ge=0, le=10, description="retries of a request to a tracking server")
    http_backoff: int = Field(1, ge=0, description="exponential back-off factor between those retries (s)")
    http_timeout_s: int = Field(30, ge=1, description="timeout of one request to a tracking server")
    sqlite_wait_s: float = Field(600, ge=0, description="keep retrying a call that found the SQLite store locked "
                                                       "by another run this long (MLflow itself waits 20 s per call)")
    # the store holds the registered model code that serving runs: tracking_uri / artifact_location
    # may only name these (checked by flows.config.check_paths before a run starts)
    allowed_schemes: list[str] = Field(["sqlite", "file", "http", "https"],
                                       description="schemes tracking_uri may use (local paths stay in the work directory)")
    artifact_schemes: list[str] = Field(["file", "mlflow-artifacts"],
                                        description="schemes artifact_location may use (mlflow-artifacts: via the server)")
    allowed_hosts: list[str] = Field(["127.0.0.1", "localhost", "mlflow", "mlflow.seqrec.svc"],
                                     description="hosts a network tracking_uri / artifact_location may name: loopback "
                                                 "and the MLflow servers of infra/ (docker-compose, k8s)")


    @field_validator("tracking_uri")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        if v and urlsplit(v).password:
            raise ValueError("must not contain a password: config values are logged as MLflow params; put "
                             "credentials in the environment (MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD)")
        return v


def redact(uri: str) -> str:
    """A URI safe to print, log or record: the password (if any) replaced by ***."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def tracking_uri(cfg: TrackingConfig, workdir: Path) -> str:
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(workdir).resolve() / 'mlflow.db')}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def registry_dir(cfg: TrackingConfig, workdir: Path, require_shared: bool = True) -> Path:
    """The promotion log + lock directory: `tracking.registry_dir`, else next to the SQLite store.

    Any other store (a tracking server, a database URL) is shared by runners with different work
    directories, so a per-work-directory default would give each of them its own lock and log, and
    each would promote its own champion: without `tracking.registry_dir` that is a ConfigError
    (raised before any MLflow call). `require_shared=False` (read-only commands that never touch the
    log or lock) falls back to <workdir>/registry instead."""
    if cfg.registry_dir:
        return Path(cfg.registry_dir).resolve()
    uri = tracking_uri(cfg, workdir)
    db = sqlite_path(uri)
    if db is not None:
        return db.resolve().parent / "registry"
    if require_shared:
        raise ConfigError(
            f"tracking store {redact(uri)} is not a local SQLite file, so the promotion log and lock cannot default "
            f"to this work directory (runners with other work directories on the same store would each keep "
            f"their own and promote their own champion): set tracking.registry_dir to a directory on storage "
            f"shared by all runners of this store (e.g. --set tracking.registry_dir=/shared/seqrec-registry)")
    return Path(workdir).resolve() / "registry"


def store_key(uri: str) -> str:
    """What identifies a tracking store independent of credentials: the resolved SQLite file, or
    scheme://host:port/path of any other URI (user name, password and query left out)."""
    db = sqlite_path(uri)
    if db is not None:
        return f"sqlite:///{db.resolve()}"
    parts = urlsplit(uri)
    if not parts.scheme:
        return str(Path(uri).resolve())
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme.lower()}://{host}{parts.path.rstrip('/')}"


def client_for(cfg: TrackingConfig, workdir: Path):
    """An MlflowClient on the configured store (the SQLite file's directory is created if needed)."""
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # the pyfunc declares an explicit signature; MLflow's nudge towards type-hint inference is noise
    warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method.*")
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(cfg, workdir)
    db = sqlite_path(uri)
    # bounded: MLflow's defaults (7 retries, factor 2) keep a run waiting for minutes on a dead server
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.http_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(cfg.http_backoff)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.http_timeout_s)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow also exports the URI as environment variables; tracking_uri() reads that variable, so a
    # later run in this process with another work directory would silently inherit this store
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if not db:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    return PatientClient(_sqlite_client(uri, db), cfg.sqlite_wait_s)


def _sqlite_client(uri: str, db: Path):
    from filelock import FileLock
    from mlflow import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    # two runs creating a new SQLite store at once race in MLflow's schema migrations ("duplicate
    # column name", "alembic_version: 0 rows"): creating the client and the first touch of both
    # stores is serialised
    with FileLock(str(db) + ".init.lock"):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    return client


def _locked(e: BaseException) -> bool:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if "database is locked" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def patient(fn, wait_s: float, *args, **kwargs):
    """fn(*args, **kwargs), retried with back-off while SQLite reports "database is locked".

    Safe to repeat: a statement that hit the lock was rolled back, so nothing of it was written.
    Another run holding the store for longer than MLflow's own 20 s busy timeout (a long
    transaction, a backup, `sqlite3` in a shell) makes this run wait, not fail."""
    import logging

    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not _locked(e) or time.monotonic() >= deadline:
                raise
            logging.getLogger("seqrec.tracking").warning(
                "MLflow store is locked by another process (%s); retrying in %.1fs", getattr(fn, "__name__", fn), delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


class PatientClient:
    """An MlflowClient whose calls wait out a locked SQLite store (see `patient`)."""

    def __init__(self, client, wait_s: float) -> None:
        self._client, self._wait_s = client, wait_s

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return functools.partial(patient, attr, self._wait_s)


def ensure_experiment(client, cfg: TrackingConfig, workdir: Path) -> str:
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    loc: str | None = cfg.artifact_location
    if loc is None and sqlite_path(tracking_uri(cfg, workdir)) is None:
        pass  # a tracking server decides where artifacts go (e.g. --artifacts-destination s3://...)
    elif loc is None or "://" not in loc:
        path = Path(loc or Path(workdir).resolve() / "mlartifacts")
        path.mkdir(parents=True, exist_ok=True)
        loc = path.resolve().as_uri()
    try:
        return client.create_experiment(cfg.experiment, artifact_location=loc)
    except Exception:  # created by a concurrent run in between
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def metric_key(name: str) -> str:
    """MLflow metric names allow [/\\w.\\- :]: 'ndcg@10' -> 'ndcg_at_10'."""
    return name.replace("@", "_at_")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p).split('+')[0]}" for p in ("mlflow", "torch", "numpy", "pandas", "pyarrow", "pydantic")]


def model_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "user_id", required=False), ColSpec(Array("string"), "history", required=False),
                     ColSpec(Array("string"), "event_types", required=False),
                     ColSpec(Array("long"), "timestamps", required=False), ColSpec("long", "k", required=False)])
    outputs = Schema([ColSpec("string", "user_id", required=False), ColSpec(Array("string"), "item_ids"),
                      ColSpec(Array("double"), "scores"), ColSpec("string", "source")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("k", "long", 10)]))


def input_example(bundle: Path):
    import pandas as pd

    hist = pd.read_parquet(Path(bundle) / "histories.parquet", columns=["user_id"]).head(1)
    items = pd.read_parquet(Path(bundle) / "items.parquet").head(3)["item_id"].astype(str).tolist()
    return pd.DataFrame({"user_id": [str(hist["user_id"].iloc[0]), None], "history": [None, items], "k": [10, 5]})


def training_curve(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] + 1 for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k in ("ndcg@10", "hr@10", "mrr@10"):
        pts = [(e, h["validation"][k]) for e, h in zip(ep, history) if k in h.get("validation", {})]
        if pts:
            a.plot(*zip(*pts), marker=".", label=f"validation {k}")
    a.set_xlabel("epoch")
    a.legend()
    a.set_title("validation ranking metrics")
    for k in sorted({k for h in history for k in h.get("loss", {})}):
        b.plot(ep, [h["loss"].get(k, float("nan")) for h in history], label=k)
    b.set_xlabel("epoch")
    b.set_yscale("log")
    b.legend()
    b.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_pyfunc(run_id: str, bundle: Path, wait_s: float):
    """Log a bundle (a network's or a baseline's) as the run's pyfunc model: the same model code,
    signature and input example for every version, so each serves alike."""
    import mlflow

    with mlflow.start_run(run_id=run_id):
        return patient(mlflow.pyfunc.log_model, wait_s, name="model",
                       python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                       artifacts={"bundle": str(bundle)}, code_paths=[str(REPO / p) for p in CODE_PACKAGES],
                       pip_requirements=pip_requirements(), signature=model_signature(),
                       input_example=input_example(bundle))


def _final_metrics(summary: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    m = summary.get("metrics") or {}
    for split, key in (("validation", "val"), ("test", "test")):
        for k, v in (m.get(split) or {}).items():
            out[f"{key}/{metric_key(k)}"] = float(v)
    for split, heads in (m.get("aux") or {}).items():
        for head, vals in heads.items():
            for k, v in vals.items():
                out[f"aux/{head}/{'val' if split == 'validation' else split}/{k}"] = float(v)
    for name, splits in (summary.get("baselines") or {}).items():
        for split, vals in splits.items():
            for k, v in vals.items():
                out[f"baseline/{name}/{'val' if split == 'validation' else split}/{metric_key(k)}"] = float(v)
    tr = summary.get("training") or {}
    for k in ("train_seconds", "best_epoch", "epochs_run", "parameters", "budgeted_epochs", "epoch_seconds_est",
              "final_lr"):
        if tr.get(k) is not None:
            out[f"train/{k}"] = float(tr[k])
    for name, cand in ((summary.get("selection") or {}).get("candidates") or {}).items():
        out[f"select/{name}/val/ndcg_at_10"] = float(cand["validation_ndcg@10"])
    return out


def _test_ndcg(summary: dict) -> float:
    return (summary.get("metrics") or {}).get("test", {}).get("ndcg@10", float("nan"))


def _log_batches(client, run_id: str, metrics=(), params=(), tags=()) -> None:
    metrics, params, tags = list(metrics), list(params), list(tags)
    for i in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[i:i + 900])
    for i in range(0, len(params), 90):
        client.log_batch(run_id, params=params[i:i + 90])
    if tags:
        client.log_batch(run_id, tags=tags)


def log_and_register(cfg: TrackingConfig, workdir: Path, run_dir: Path, config: dict[str, Any],
                     params: dict[str, Any], summary: dict, bundle: Path, flow_run_id: str | None) -> dict:
    """Create the MLflow run, log everything known after evaluation, log + register the pyfunc and
    give the new version alias `challenger`. `config` is the nested pipeline config, `params` its
    flattened form. Returns name, version, run id and URIs. Idempotent per run: a retried or resumed
    run (same seqrec run id or Prefect flow-run id, same data version) gets back the version it
    registered before (`reused: true`) instead of a second one. A tracking server that stays unreachable
    through the bounded retries is a clear TrackingUnavailable error; nothing is registered then."""
    try:
        return _log_and_register(cfg, workdir, run_dir, config, params, summary, bundle, flow_run_id)
    except Exception as e:
        uri = tracking_uri(cfg, workdir)
        if sqlite_path(uri) is None and _unreachable(e):
            raise TrackingUnavailable(
                f"MLflow tracking server {redact(uri)} unreachable after {cfg.http_retries} retries "
                f"({type(e).__name__}: {str(e).splitlines()[0][:300]}); nothing was registered") from e
        raise


class TrackingUnavailable(SeqrecError):
    """The tracking server did not answer within the configured retries."""


def _unreachable(e: BaseException) -> bool:
    import requests

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.ConnectionError, requests.Timeout, ConnectionError)):
            return True
        text = str(e)
        if "Max retries exceeded" in text or "Connection refused" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def _log_and_register(cfg: TrackingConfig, workdir: Path, run_dir: Path, config: dict[str, Any],
                      params: dict[str, Any], summary: dict, bundle: Path, flow_run_id: str | None) -> dict:
    import math

    import mlflow
    import yaml
    from mlflow.entities import Metric, Param

    t0 = time.perf_counter()
    client = client_for(cfg, workdir)
    # one run, one version: a retried or resumed run finds what an earlier attempt registered
    weights = file_digest(Path(bundle) / "weights.pt")
    before = registered_before(client, cfg.model_name, summary, flow_run_id, weights)
    if before is not None:
        return _reuse(client, cfg, workdir, before, t0)
    exp_id = ensure_experiment(client, cfg, workdir)
    ds = summary.get("dataset") or {}
    tags = {"seqrec.run_id": summary["run_id"], "data_version": summary.get("data_version") or "",
            "git_commit": git_commit(), "prefect.flow_run_id": flow_run_id or "",
            **{f"dataset.{k}": str(v) for k, v in ds.items()}, "mlflow.runName": summary["run_id"]}
    run = client.create_run(exp_id, tags=tags, run_name=summary["run_id"])
    rid = run.info.run_id
    try:
        now = int(time.time() * 1000)
        params = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
        metrics = []
        for h in summary.get("history") or []:
            # per-epoch curves under epoch/ (final values have their own keys: one value per key and step)
            vals = {f"epoch/val/{metric_key(k)}": v for k, v in (h.get("validation") or {}).items() if k != "users"}
            vals.update({f"epoch/loss/{k}": v for k, v in (h.get("loss") or {}).items()})
            vals["epoch/elapsed_s"] = h["elapsed_s"]
            if h.get("lr") is not None:
                vals["epoch/lr"] = h["lr"]
            metrics += [Metric(k, float(v), now, int(h["epoch"])) for k, v in vals.items()
                        if isinstance(v, (int, float)) and math.isfinite(v)]
        metrics += [Metric(k, v, now, 0) for k, v in _final_metrics(summary).items() if math.isfinite(v)]
        _log_batches(client, rid, metrics, params)
        art = Path(run_dir) / "mlflow"
        art.mkdir(exist_ok=True)
        (art / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        client.log_artifact(rid, str(art / "config.yaml"))
        if summary.get("selection"):  # the candidates' validation scores and the winner (select.auto)
            (art / "selection.json").write_text(json.dumps(summary["selection"], indent=2))
            client.log_artifact(rid, str(art / "selection.json"))
        if summary.get("history"):
            client.log_artifact(rid, str(training_curve(summary["history"], art / "training_curve.png")))
        if summary.get("per_user_metrics"):
            client.log_artifact(rid, summary["per_user_metrics"])
        quality = Path(run_dir) / "quality"
        if quality.is_dir():
            client.log_artifacts(rid, str(quality), artifact_path="quality")
        info = log_pyfunc(rid, bundle, cfg.sqlite_wait_s)
        mv = patient(mlflow.register_model, cfg.sqlite_wait_s, info.model_uri, cfg.model_name,
                                   tags={"seqrec.run_id": summary["run_id"],
                                         "prefect.flow_run_id": str(flow_run_id or ""),
                                         "weights.digest": weights,
                                         "data_version": summary.get("data_version") or "",
                                         "test.ndcg_at_10": f"{_test_ndcg(summary):.5f}"})
        client.set_registered_model_alias(cfg.model_name, "challenger", mv.version)
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    client.set_terminated(rid, "FINISHED")
    return _registration(cfg, workdir, int(mv.version), rid, exp_id, t0, reused=False)


def _registration(cfg: TrackingConfig, workdir: Path, version: int, rid: str, exp_id: str, t0: float,
                  reused: bool) -> dict:
    return {"name": cfg.model_name, "version": version, "tracking_uri": redact(tracking_uri(cfg, workdir)),
            "mlflow_run_id": rid, "experiment_id": exp_id, "model_uri": f"models:/{cfg.model_name}/{version}",
            "seconds": round(time.perf_counter() - t0, 3), "reused": reused}


def _versions_tagged(client, name: str, key: str, value: str) -> list:
    """Versions of `name` whose tag `key` is `value` (filtered by the store unless quoting gets odd)."""
    odd = any(c in value for c in "'\"\\`")
    flt = f"name='{name}'" + ("" if odd else f" and tags.`{key}` = '{value}'")
    return [v for v in client.search_model_versions(flt) if (v.tags or {}).get(key) == value]


def registered_before(client, name: str, summary: dict, flow_run_id: str | None, weights: str | None = None):
    """The version that an earlier attempt of this run registered, or None.

    An attempt is the same run when it has the same seqrec run id or the same Prefect flow-run id
    (a flow retry, whose run id was generated anew), the same data version (never attach this
    run's summary to a model trained on other data) and the same weights (`weights`: digest of the
    bundle's weights.pt; a retry that trained again to other weights registers them, so what the
    A/B judged is what gets promoted). Versions whose registration failed or whose MLflow run was
    deleted do not count."""
    from mlflow.exceptions import MlflowException

    data_version = summary.get("data_version") or ""
    found = {int(v.version): v for v in _versions_tagged(client, name, "seqrec.run_id", summary["run_id"])}
    if flow_run_id:
        found.update({int(v.version): v for v in _versions_tagged(client, name, "prefect.flow_run_id",
                                                                  str(flow_run_id))})
    for version in sorted(found, reverse=True):
        mv = found[version]
        tags = mv.tags or {}
        if tags.get("kind") == "baseline":  # a baseline this run registered (baseline_before finds those)
            continue
        if tags.get("data_version", "") != data_version or mv.status not in ("READY", None) or not mv.run_id:
            continue
        if weights is not None and tags.get("weights.digest", weights) != weights:
            continue
        try:
            run = client.get_run(mv.run_id)
        except MlflowException:
            continue
        if run.info.lifecycle_stage == "deleted":
            continue
        return mv, run
    return None


def _reuse(client, cfg: TrackingConfig, workdir: Path, before, t0: float) -> dict:
    """Finish what the earlier attempt may have left undone (challenger alias, run status) and
    return its registration. The version exists, so its model was logged in full."""
    import logging

    mv, run = before
    if run.info.status != "FINISHED":
        client.set_terminated(run.info.run_id, "FINISHED")
    client.set_registered_model_alias(cfg.model_name, "challenger", mv.version)
    logging.getLogger("seqrec.tracking").warning(
        "run %s already registered %s version %s (MLflow run %s): reusing it instead of registering another",
        (mv.tags or {}).get("seqrec.run_id"), cfg.model_name, mv.version, run.info.run_id)
    return _registration(cfg, workdir, int(mv.version), run.info.run_id, run.info.experiment_id, t0, reused=True)


def log_and_register_baseline(cfg: TrackingConfig, workdir: Path, run_dir: Path, summary: dict, bundle: Path,
                              baseline: str, against: int, network_run_id: str | None,
                              flow_run_id: str | None) -> dict:
    """A baseline bundle (tasks.bundle.write_baseline_bundle) logged as a pyfunc in its own MLflow run
    (a child of the network's run), with the evaluation's metrics of that baseline, and registered
    as a version tagged kind=baseline, baseline=<name>. It gets no alias here (the caller promotes
    it). Idempotent per run: a retried or resumed run gets back the baseline version it registered."""
    import math

    import mlflow
    from mlflow.entities import Metric

    t0 = time.perf_counter()
    client = client_for(cfg, workdir)
    before = baseline_before(client, cfg.model_name, summary, baseline)
    if before is not None:
        mv, run = before
        if run.info.status != "FINISHED":
            client.set_terminated(run.info.run_id, "FINISHED")
        return {**_registration(cfg, workdir, int(mv.version), run.info.run_id, run.info.experiment_id, t0,
                                reused=True), "baseline": baseline}
    exp_id = ensure_experiment(client, cfg, workdir)
    metrics = summary["baselines"][baseline]
    name = f"{summary['run_id']}-{baseline}-baseline"
    tags = {"seqrec.baseline_of_run": summary["run_id"], "kind": "baseline", "baseline": baseline,
            "data_version": summary.get("data_version") or "", "git_commit": git_commit(),
            "prefect.flow_run_id": flow_run_id or "", "mlflow.runName": name,
            **({"mlflow.parentRunId": network_run_id} if network_run_id else {})}
    run = client.create_run(exp_id, tags=tags, run_name=name)
    rid = run.info.run_id
    try:
        now = int(time.time() * 1000)
        # the same keys as the network run's final metrics: the two compare side by side in MLflow
        _log_batches(client, rid, [Metric(f"{'val' if split == 'validation' else split}/{metric_key(k)}", float(v),
                                          now, 0)
                                   for split, vals in metrics.items() for k, v in vals.items()
                                   if isinstance(v, (int, float)) and math.isfinite(v)])
        art = Path(run_dir) / "mlflow"
        art.mkdir(exist_ok=True)
        path = art / f"{baseline}_baseline_metrics.json"
        path.write_text(json.dumps({"baseline": baseline, "data_version": summary.get("data_version"),
                                    "won_against_version": against, "metrics": metrics}, indent=2))
        client.log_artifact(rid, str(path))
        info = log_pyfunc(rid, bundle, cfg.sqlite_wait_s)
        test = metrics.get("test") or {}
        mv = patient(mlflow.register_model, cfg.sqlite_wait_s, info.model_uri, cfg.model_name,
                     tags={"kind": "baseline", "baseline": baseline,
                           # not seqrec.run_id / prefect.flow_run_id: those find the run's network version
                           "baseline.run_id": summary["run_id"], "baseline.flow_run_id": str(flow_run_id or ""),
                           "baseline.won_against": str(against),
                           "data_version": summary.get("data_version") or "",
                           "test.ndcg_at_10": f"{test.get('ndcg@10', float('nan')):.5f}"})
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    client.set_terminated(rid, "FINISHED")
    return {**_registration(cfg, workdir, int(mv.version), rid, exp_id, t0, reused=False), "baseline": baseline}


def baseline_before(client, name: str, summary: dict, baseline: str):
    """(version, MLflow run) of the `baseline` that an earlier attempt of this run registered, or None."""
    from mlflow.exceptions import MlflowException

    data_version = summary.get("data_version") or ""
    found = _versions_tagged(client, name, "baseline.run_id", summary["run_id"])
    for mv in sorted(found, key=lambda v: int(v.version), reverse=True):
        tags = mv.tags or {}
        if tags.get("kind") != "baseline" or tags.get("baseline") != baseline or \
                tags.get("data_version", "") != data_version or mv.status not in ("READY", None) or not mv.run_id:
            continue
        try:
            run = client.get_run(mv.run_id)
        except MlflowException:
            continue
        if run.info.lifecycle_stage != "deleted":
            return mv, run
    return None


def bundle_of(client, name: str, version: int | str, dst: Path) -> Path:
    """Download a registered version's bundle directory (the scorer's input) into `dst`."""
    import mlflow

    mv = client.get_model_version(name, str(version))
    root = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst))
    path = Path(root) / "artifacts" / "bundle"
    if not (path / "bundle.json").is_file():
        raise ConfigError(f"model {name} version {version}: no seqrec bundle in its artifacts ({mv.source})")
    return path


def attach_run_report(client, mlflow_run_id: str, run_dir: Path, summary_path: Path, ab: dict,
                      promoted: bool) -> None:
    """The A/B report, the decision's figures and the run summary onto the run's MLflow record."""
    if (run_dir / "ab").is_dir():
        client.log_artifacts(mlflow_run_id, str(run_dir / "ab"), artifact_path="ab")
    if (run_dir / "drift").is_dir():  # the drift report against the champion's data (tasks/drift.py)
        client.log_artifacts(mlflow_run_id, str(run_dir / "drift"), artifact_path="drift")
    for k in ("lift", "ci_low", "ci_high", "p_value"):
        if ab.get(k) is not None:
            client.log_metric(mlflow_run_id, f"ab/{k}", float(ab[k]))
    client.set_tag(mlflow_run_id, "ab.decision", ab.get("decision", "none"))
    client.set_tag(mlflow_run_id, "promoted", str(promoted).lower())
    client.log_artifact(mlflow_run_id, str(summary_path))
