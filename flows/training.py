"""The training flow: ingest -> validate raw -> preprocess -> validate processed -> features ->
train -> evaluate -> register -> compare -> promote.

Composition only: which task, in what order, with what config. Each stage is timed and the run
summary is rewritten atomically after every stage, so a failure still leaves a complete record of
what ran, what failed and why.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import ab_artifact, quality_artifact, summary_artifact
from flows.config import PipelineConfig
from seqrec.errors import SeqrecError
from seqrec.fsutil import sole_writer, stable_hash, write_json_atomic
from tasks import preprocess as pre
from tasks import sources, validate
from tasks.dask_cluster import dask_client, stage_client

STAGES = ["ingest", "validate_raw", "preprocess", "validate_processed", "features", "train", "evaluate", "register",
          "compare", "promote"]


@task(name="ingest", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=lambda t, r, s: not isinstance(s.result(raise_on_failure=False), SeqrecError))
def ingest_task(cfg: sources.DataConfig) -> sources.ResolvedInputs:
    return sources.resolve_inputs(cfg)


@task(name="validate_raw", cache_policy=NO_CACHE)
def validate_raw_task(inputs, vcfg, report_dir: Path):
    with stage_client() as client:
        return validate.validate_raw(inputs, vcfg, client, report_dir)


def _preprocess_key(_ctx, p: dict) -> str:
    # the data version is the content hash of the raw inputs + preprocessing config
    version = pre.data_version(p["inputs"], p["pcfg"], p["vcfg"], p["split"])
    return f"preprocess-{version}-{stable_hash(str(p['workdir']), n=8)}"


def _features_key(_ctx, p: dict) -> str:
    from tasks.features import views_path

    return f"features-{stable_hash(str(views_path(Path(p['data_path']), p['vcfg'])), n=16)}"


@task(name="preprocess", cache_key_fn=_preprocess_key, persist_result=True)
def preprocess_task(inputs, pcfg, vcfg, workdir: Path, qrules, split):
    with stage_client() as client:
        return pre.preprocess(inputs, pcfg, vcfg, client, workdir, qrules, split)


@task(name="validate_processed", cache_policy=NO_CACHE)
def validate_processed_task(result, vcfg, raw_results, report_dir: Path):
    with stage_client() as client:
        return validate.validate_processed(result, vcfg, raw_results, report_dir, client)


@task(name="item_view", cache_policy=NO_CACHE)
def item_view_task(data_path: str, vcfg, cache_dir: Path) -> dict:
    from tasks.features import item_view

    return item_view(Path(data_path), vcfg, cache_dir)


@task(name="user_view", cache_policy=NO_CACHE)
def user_view_task(data_path: str, vcfg) -> dict:
    from tasks.features import user_view

    return user_view(Path(data_path), vcfg)


@task(name="sequence_view", cache_policy=NO_CACHE)
def sequence_view_task(data_path: str, vcfg) -> dict:
    from tasks.features import sequence_view

    return sequence_view(Path(data_path), vcfg)


@task(name="features", cache_key_fn=_features_key, persist_result=True)
def features_task(data_path: str, vcfg, views: tuple | None) -> str:
    """Writes the three views' outputs as one views directory (atomically); returns its path."""
    from tasks.features import views_path, write_views_dir

    out = views_path(Path(data_path), vcfg)
    if views is None:
        if not out.is_dir():
            raise RuntimeError(f"views {out} expected to exist")
        return str(out)
    return str(write_views_dir(Path(data_path), vcfg, *views))


def build_features(run: "Runner", data_path: str, vcfg, cache_dir: Path, storage, refresh: bool,
                   log=print) -> tuple[Path, bool]:
    """The three view stages concurrently, then the combined write; a Prefect cache hit (keyed by the
    views' content hash) skips all of it when the views directory exists."""
    from tasks.features import views_path

    out = views_path(Path(data_path), vcfg)
    # one writer per views directory; a writer killed mid-write left only its hidden temp directory
    with sole_writer(out, f".{out.name}.tmp-*", log, "views"):
        exists = out.is_dir()
        combine = features_task.with_options(result_storage=storage, refresh_cache=refresh or not exists)
        if exists and not refresh:  # an expected cache hit: looked up in the flow process
            return Path(Runner(None)(combine, data_path=data_path, vcfg=vcfg, views=None)), True
        futures = [run.submit(item_view_task, data_path=data_path, vcfg=vcfg, cache_dir=cache_dir),
                   run.submit(user_view_task, data_path=data_path, vcfg=vcfg),
                   run.submit(sequence_view_task, data_path=data_path, vcfg=vcfg)]
        return Path(run(combine, data_path=data_path, vcfg=vcfg, views=tuple(f.result() for f in futures))), False


class Runner:
    """Where stage tasks run: Prefect's DaskTaskRunner on the pipeline's Dask cluster (`dask.task_runner
    = dask`, the default), or the flow's own thread pool (`threads`)."""

    def __init__(self, task_runner=None) -> None:
        self.task_runner = task_runner

    def submit(self, task_, **parameters):
        if self.task_runner is None:
            return task_.submit(**parameters)
        return self.task_runner.submit(task_, parameters=parameters)

    def __call__(self, task_, **parameters):
        return self.submit(task_, **parameters).result()


@task(name="train", cache_policy=NO_CACHE)
def train_task(data_path: str, views: Path, config: PipelineConfig, run_dir: Path) -> dict:
    from seqrec.fsutil import waiting_lock
    from tasks.train import checkpoint_key, train

    log = get_run_logger()
    key = checkpoint_key(Path(data_path), views, config.model, config.train, config.seed, config.eval.exclude_seen)
    ckpt = run_dir.parent.parent / "checkpoints" / key
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with waiting_lock(Path(str(ckpt) + ".lock"), log.info, f"another run is training the same job ({ckpt}); waiting"):
        return train(Path(data_path), views, config.model, config.train, config.seed, run_dir,
                     log=log.info, exclude_seen=config.eval.exclude_seen, ckpt_dir=ckpt,
                     item_chunk=config.eval.item_chunk)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(data_path: str, views: Path, config: PipelineConfig, model_path: str, run_dir: Path) -> dict:
    from tasks.train import evaluate

    return evaluate(Path(data_path), views, config.model, config.train, config.eval, Path(model_path), run_dir)


@task(name="register", cache_policy=NO_CACHE)
def register_task(config: PipelineConfig, workdir: Path, run_dir: Path, summary: dict, data_path: str,
                  views: Path) -> dict:
    import shutil

    from prefect.runtime import flow_run

    from seqrec.fsutil import flatten
    from tasks.bundle import write_bundle
    from tasks.registry import open_registry
    from tasks.tracking import log_and_register

    # before anything is written or registered: a store without a shared registry directory
    # (ConfigError) or a champion deleted in MLflow (RegistryError naming the repair) stops here,
    # instead of registering versions that can never be compared or promoted
    open_registry(config.tracking, workdir).check_champion()
    if (run_dir / "bundle").exists():  # an earlier attempt of this run (a retry or resume)
        shutil.rmtree(run_dir / "bundle")
    bundle = write_bundle(run_dir / "bundle", Path(data_path), views, config.model,
                          Path(summary["training"]["model_path"]), config.eval.exclude_seen)
    # idempotent: an earlier attempt's version is returned instead of registering another
    return log_and_register(config.tracking, workdir, run_dir, config.model_dump(mode="json", by_alias=True),
                            flatten(config), summary, bundle, flow_run.get_id())


@task(name="compare", cache_policy=NO_CACHE)
def compare_task(config: PipelineConfig, workdir: Path, data_path: str, run_dir: Path, summary: dict) -> dict:
    from tasks.ab import run_ab
    from tasks.registry import open_registry

    log = get_run_logger()
    return run_ab(config.ab, open_registry(config.tracking, workdir), Path(data_path), run_dir, summary,
                  summary["model"]["version"], run_dir / "bundle", config.eval.exclude_seen, config.eval.batch_size,
                  config.seed, log.info)


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(config: PipelineConfig, workdir: Path, version: int, decision: dict, mlflow_run_id: str) -> bool:
    from tasks.registry import RegistryError, open_registry

    registry = open_registry(config.tracking, workdir)
    if decision["decision"] != "pass":
        return False
    champion = registry.champion()
    if champion == version:  # a resumed run whose (reused) version an earlier attempt promoted
        get_run_logger().info("version %d is already the champion (promoted by an earlier attempt)", version)
        return True
    if champion != decision["reference_version"]:  # cannot happen under the lock; never act stale
        raise RegistryError(f"champion moved to {champion} after the A/B against "
                            f"{decision['reference_version']}; not promoting version {version}")
    entry = registry.promote(version, "promote", mlflow_run_id, decision,
                             reason=f"A/B pass against {decision['baseline']}")
    # the alias moved: the promotion is done; bookkeeping that failed after it is a warning, not a failure
    for w in entry.get("warnings") or []:
        get_run_logger().warning("promote: %s", w)
    return True


class RunSummary:
    """Written to <run_dir>/summary.json after every stage."""

    def __init__(self, run_dir: Path, run_id: str) -> None:
        self.path = run_dir / "summary.json"
        self.data: dict[str, Any] = {"status": "running", "failed_stage": None, "error": None, "run_id": run_id,
                                     "data_version": None, "dataset": None, "timings_s": {}, "stages": [],
                                     "run_dir": str(run_dir)}
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    @contextlib.contextmanager
    def stage(self, name: str):
        t = time.perf_counter()
        try:
            yield
        except BaseException as e:
            self.data.update(status="failed", failed_stage=name, error=f"{type(e).__name__}: {e}" if not
                             isinstance(e, SeqrecError) else str(e))
            if not isinstance(e, SeqrecError):
                self.data["traceback"] = traceback.format_exc()[-4000:]
            _artifact(summary_artifact, self.data)
            raise
        finally:
            self.data["timings_s"][name] = round(time.perf_counter() - t, 3)
            self.data["stages"].append(name)
            self.save()


@flow(name="seqrec-training", log_prints=True)
def training_flow(config: PipelineConfig = PipelineConfig(), workdir: str = ".seqrec", run_id: str | None = None,
                  until: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Train, evaluate, register, compare and (if the A/B passes) promote. `refresh` recomputes the
    cached pure stages (preprocess, features) even when their content hash is unchanged."""
    from prefect.filesystems import LocalFileSystem
    from prefect.runtime import flow_run

    from seqrec.paths import check_paths
    from tasks.tracking import registry_dir

    log = get_run_logger()
    wd = Path(workdir).resolve()
    # before anything is written: a deployment's parameters skip the CLI's check
    config = check_paths(config, wd)
    if until not in STAGES[:STAGES.index("register")]:
        # a remote store without a shared promotion log is refused now, not after training
        registry_dir(config.tracking, wd)
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + str(flow_run.get_id() or "")[:6]
    run_dir = wd / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(run_dir, run_id)
    summary.data["prefect"] = {"flow_run_id": str(flow_run.get_id()), "api_url": _api_url()}
    summary.save()
    # cached results live with the work directory they describe (a saved block: Prefect requires it)
    storage = LocalFileSystem(basepath=str(wd / "prefect-results"))
    storage.save(f"seqrec-results-{stable_hash(str(wd), n=12)}", overwrite=True)
    t0 = time.perf_counter()

    with summary.stage("ingest"):
        inputs = ingest_task(config.data)
        log.info("ingest: %d event file(s) from source %s", len(inputs.events), inputs.source)
    if until == "ingest":
        return _finish(summary, t0)
    # worker processes report task runs to this flow's API (the ephemeral one too), never their own
    with dask_client(config.dask, wd, worker_env={"PREFECT_API_URL": _client_api_url()}) as client, \
            _task_runner(config.dask, client) as task_runner:
        log.info("dask: %s; stage tasks on %s", client.dashboard_link if config.dask.address else
                 f"local cluster {client.scheduler.address}",
                 "the Dask cluster (DaskTaskRunner)" if task_runner else "the flow's thread pool")
        summary.data["task_runner"] = "dask" if task_runner else "threads"
        _pipeline(Runner(task_runner), config, wd, run_dir, inputs, summary, storage, until, refresh, log)
    return _finish(summary, t0)


@contextlib.contextmanager
def _task_runner(cfg, client):
    if cfg.task_runner != "dask":
        yield None
        return
    from prefect_dask import DaskTaskRunner

    with DaskTaskRunner(address=client.scheduler.address) as runner:
        yield runner


def _pipeline(run: Runner, config: PipelineConfig, wd: Path, run_dir: Path, inputs, summary: RunSummary, storage,
              until: str | None, refresh: bool, log) -> None:
    """The stages after ingest; returns early at `until` (the caller finishes the summary).

    Data stages run on `run` (the DaskTaskRunner by default). Model stages run in the flow process:
    training is one long task that does not use the cluster, the GPU (if any) sits with the flow, and
    on a worker process it measured 1.6x slower on this machine (BENCHMARKS.md, orchestration)."""
    local = Runner(None)
    with summary.stage("validate_raw"):
        raw = run(validate_raw_task, inputs=inputs, vcfg=config.validation, report_dir=run_dir)
        summary.data["quality"] = {"report_dir": str(run_dir / "quality"),
                                   "tables": {r.table: {"rows": r.rows, "success": r.success} for r in raw}}
    if until == "validate_raw":
        return
    qrules = next(r for r in raw if r.table == "events").quarantine_rules or None
    version = pre.data_version(inputs, config.preprocess, config.validation, config.eval.split())
    # one writer per data version: a second run waits, then finds it; a writer killed earlier left only
    # an invisible staging directory, removed here (no live writer can own it while we hold the lock)
    with sole_writer(wd / "data" / version, f".staging-{version}-*", log.info, "data version"):
        result = _preprocess_and_validate(run, local, config, wd, run_dir, inputs, raw, qrules, version, summary,
                                          storage, refresh, log)
    if until in ("preprocess", "validate_processed"):
        return
    with summary.stage("features"):
        views, cached = build_features(run, result.path, config.views, sources.cache_root(config.data), storage,
                                       refresh, log.info)
        summary.data["views_path"] = str(views)
        summary.data["views_reused"] = cached
    if until == "features":
        return
    from tasks.train import resolve_exclude_seen

    # one evaluation protocol for model selection, evaluation, the bundle and the A/B
    ecfg, summary.data["eval_protocol"] = resolve_exclude_seen(Path(result.path), config.eval, log.warning)
    config = config.model_copy(update={"eval": ecfg})
    with summary.stage("train"):
        trained = local(train_task, data_path=result.path, views=views, config=config, run_dir=run_dir)
        summary.data["history"] = trained.pop("history")
        summary.data["training"] = trained
    if until == "train":
        return
    with summary.stage("evaluate"):
        ev = local(evaluate_task, data_path=result.path, views=views, config=config,
                 model_path=trained["model_path"], run_dir=run_dir)
        summary.data["metrics"] = {"validation": ev["validation"], "test": ev["test"], "aux": ev["aux"]}
        summary.data["baselines"] = ev["baselines"]
        summary.data["per_user_metrics"] = ev["per_user_metrics"]
        log.info("test: %s", {k: round(v, 4) for k, v in ev["test"].items() if k in ("ndcg@10", "hr@10", "mrr@10")})
    if until == "evaluate":
        return
    with summary.stage("register"):
        reg = local(register_task, config=config, workdir=wd, run_dir=run_dir, summary=summary.data,
                  data_path=result.path, views=views)
        summary.data["model"] = {k: reg[k] for k in ("name", "version", "tracking_uri")}
        summary.data["mlflow"] = {k: reg[k] for k in ("mlflow_run_id", "experiment_id", "model_uri")}
        log.info("registered %s version %d (alias challenger), MLflow run %s", reg["name"], reg["version"],
                 reg["mlflow_run_id"])
    if until == "register":
        return
    from tasks.registry import open_registry

    registry = open_registry(config.tracking, wd)
    # compare + promote hold the registry lock: a concurrent run waits here instead of promoting
    # against a champion that is about to change
    with registry.lock(log.info):
        with summary.stage("compare"):
            ab = local(compare_task, config=config, workdir=wd, data_path=result.path, run_dir=run_dir,
                     summary=summary.data)
            summary.data["ab"] = {k: ab[k] for k in ("decision", "reasons", "baseline", "reference_version", "mode",
                                                     "primary_metric", "threshold", "lift", "relative_lift", "ci_low",
                                                     "ci_high", "p_value", "test", "alternative", "n_users", "shares",
                                                     "guardrails", "latency")}
            if ab["lift"] is None:  # refused: no comparison was made
                log.warning("A/B vs %s: %s %s", ab["baseline"], ab["decision"], "; ".join(ab["reasons"]))
            else:
                log.info("A/B vs %s: lift %+.5f [%+.5f, %+.5f], p=%.3g -> %s %s", ab["baseline"], ab["lift"],
                         ab["ci_low"], ab["ci_high"], ab["p_value"], ab["decision"], "; ".join(ab["reasons"]))
        if until == "compare":
            return
        with summary.stage("promote"):
            summary.data["promoted"] = local(promote_task, config=config, workdir=wd, version=reg["version"],
                                           decision=ab, mlflow_run_id=reg["mlflow_run_id"])
            summary.data["champion"] = registry.champion()
    _artifact(ab_artifact, summary.data)
    try:  # the decision (and a promotion) is done and recorded; attaching the reports is bookkeeping
        _log_run_artifacts(registry.client, reg["mlflow_run_id"], run_dir, summary)
    except Exception as e:  # noqa: BLE001
        summary.data.setdefault("warnings", []).append(f"could not attach the A/B report to the MLflow run: {e}")
        summary.save()
        log.warning("could not attach the A/B report to MLflow run %s: %s", reg["mlflow_run_id"], e)


def _preprocess_and_validate(run: "Runner", local: "Runner", config: PipelineConfig, wd: Path, run_dir: Path,
                             inputs, raw, qrules, version: str, summary: "RunSummary", storage, refresh: bool,
                             log):
    """The preprocess stage and the processed-data gate that makes its version visible."""
    with summary.stage("preprocess"):
        exists = (wd / "data" / version).is_dir()
        # an expected cache hit is looked up in the flow process: shipping it to a worker costs imports
        result = (local if exists and not refresh else run)(
            preprocess_task.with_options(result_storage=storage, refresh_cache=refresh or not exists),
            inputs=inputs, pcfg=config.preprocess, vcfg=config.validation, workdir=wd, qrules=qrules,
            split=config.eval.split())
        if exists and not refresh:  # a cache hit, or the content-addressed version found on disk
            result = result.model_copy(update={"reused": True, "staging_path": None})
        summary.data.update(data_version=result.data_version, data_path=result.path, data_reused=result.reused,
                            drops=result.drops, dataset={k: result.counts[k] for k in ("users", "items", "events")})
        log.info("preprocess: data version %s (%s), %s, dropped %s", result.data_version,
                 "reused" if result.reused else "new", summary.data["dataset"], result.drops)
    # processed validation gates the version even with --until preprocess: a data version becomes
    # visible only after it passed, so "preprocess" includes it
    with summary.stage("validate_processed"):
        processed = (local if result.reused else run)(validate_processed_task, result=result,
                                                      vcfg=config.validation, raw_results=raw, report_dir=run_dir)
        _artifact(quality_artifact, [*raw, processed])
    return result


def _log_run_artifacts(client, mlflow_run_id: str, run_dir: Path, summary: "RunSummary") -> None:
    """A/B report, decision metrics and the run summary onto the run's MLflow record."""
    ab = summary.data.get("ab") or {}
    if (run_dir / "ab").is_dir():
        client.log_artifacts(mlflow_run_id, str(run_dir / "ab"), artifact_path="ab")
    for k in ("lift", "ci_low", "ci_high", "p_value"):
        if ab.get(k) is not None:
            client.log_metric(mlflow_run_id, f"ab/{k}", float(ab[k]))
    client.set_tag(mlflow_run_id, "ab.decision", ab.get("decision", "none"))
    client.set_tag(mlflow_run_id, "promoted", str(bool(summary.data.get("promoted"))).lower())
    summary.save()
    client.log_artifact(mlflow_run_id, str(summary.path))


def _api_url() -> str | None:
    """The configured server (None when the run uses an ephemeral one)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _client_api_url() -> str:
    """The API this process talks to, including an ephemeral server's address."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        return str(c.api_url)


def _artifact(make, *args) -> None:
    """Artifacts are a view of the run, never a reason for it to fail."""
    try:
        make(*args)
    except Exception as e:  # noqa: BLE001
        get_run_logger().warning("could not create Prefect artifact %s: %s", make.__name__, e)


def _finish(summary: RunSummary, t0: float) -> dict[str, Any]:
    summary.data["status"] = "completed"
    summary.data["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    summary.save()
    _artifact(summary_artifact, summary.data)
    return summary.data
