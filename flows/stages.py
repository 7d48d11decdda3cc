"""The parts of the training flow that are more than one task call: the data version (preprocess,
then the processed-data gate that makes it visible, one writer per version), the views (three view
tasks concurrently, then one combined write; a cache hit skips all of it), the evaluation protocol
decided on the data, the registry lock around compare + promote, and the reports attached after."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from flows.artifacts import quality_artifact
from flows.run import LOCAL, PipelineRun, Runner, artifact, inline
from seqrec.fsutil import sole_writer
from tasks import preprocess as pre
from tasks import sources
from tasks.stages import VIEW_TASKS, RawGate, ViewsResult, features_task, preprocess_task, validate_processed_task

if TYPE_CHECKING:
    from tasks.registry import Registry


def data_version(run: PipelineRun, pool: Runner, inputs: sources.ResolvedInputs, raw: RawGate) -> pre.PreprocessResult:
    """Preprocess into a staging directory, then the processed gate moves it into place."""
    c = run.config
    version = pre.data_version(inputs, c.preprocess, c.validation, c.eval.split(), raw.quarantine_rules)
    final = run.workdir / "data" / version
    # one writer per data version: a second run waits, then finds it; a writer killed earlier left only
    # an invisible staging directory, removed here (no live writer can own it while we hold the lock)
    with sole_writer(final, f".staging-{version}-*", run.log.info, "data version"):
        exists = final.is_dir()
        hit = exists and not run.refresh  # an expected cache hit: looked up in the flow process
        result = run.stage("preprocess", preprocess_task.with_options(result_storage=run.storage,
                                                                      refresh_cache=run.refresh or not exists),
                           on=LOCAL if hit else pool, then=(lambda r: r.as_reused()) if hit else None,
                           inputs=inputs, pcfg=c.preprocess, vcfg=c.validation, workdir=run.workdir,
                           qrules=raw.quarantine_rules, split=c.eval.split())
        processed = run.stage("validate_processed", validate_processed_task, on=LOCAL if result.reused else pool,
                              stop=False, result=result, vcfg=c.validation, raw=raw, report_dir=run.dir)
    artifact(quality_artifact, [*raw.tables, processed])
    run.stop_if_until("validate_processed")
    return result


def views(run: PipelineRun, pool: Runner, data: pre.PreprocessResult) -> ViewsResult:
    """The views directory of `data` for the run's views config."""
    from tasks.features import build_views, views_path

    c = run.config
    out = views_path(Path(data.path), c.views)
    # one writer per views directory; a writer killed mid-write left only its hidden temp directory
    with sole_writer(out, f".{out.name}.tmp-*", run.log.info, "views"):
        exists = out.is_dir()
        combine = features_task.with_options(result_storage=run.storage, refresh_cache=run.refresh or not exists)
        if exists and not run.refresh:  # an expected cache hit: looked up in the flow process
            return run.stage("features", combine, then=lambda p: ViewsResult(Path(p), True),
                             data_path=data.path, vcfg=c.views, views=None)

        def concurrently(calls: list) -> list:
            futures = [pool.submit(VIEW_TASKS[name], **kwargs) for name, kwargs in calls]
            return [f.result() for f in futures]

        def combined(outputs: list) -> str:
            return pool(combine, data_path=data.path, vcfg=c.views, views=tuple(outputs))

        return run.stage("features", build_views, on=inline, then=lambda p: ViewsResult(p, False),
                         data_path=Path(data.path), vcfg=c.views, cache_dir=sources.cache_root(c.data),
                         compute=concurrently, write=combined, refresh=True)


def with_protocol(run: PipelineRun, data: pre.PreprocessResult):
    """The run's config with `eval.exclude_seen` decided on this data version (auto: by its repeat
    rate): one protocol for model selection, evaluation, the bundle and the A/B."""
    from tasks.train import resolve_exclude_seen

    ecfg, run.data["eval_protocol"] = resolve_exclude_seen(Path(data.path), run.config.eval, run.log.warning)
    return run.config.model_copy(update={"eval": ecfg})


def drift(run: PipelineRun, data: pre.PreprocessResult) -> None:
    """The drift report against the champion's data and its gate (drift.mode), before any training."""
    from flows.artifacts import drift_artifact
    from tasks.stages import drift_task

    c = run.config
    if c.drift.mode == "off":
        run.stop_if_until("drift")
        return
    report = run.stage("drift", drift_task, stop=False, dcfg=c.drift, tracking=c.tracking, workdir=run.workdir,
                       data_path=data.path, run_dir=run.dir)
    artifact(drift_artifact, report)
    run.stop_if_until("drift")


def warm_start(run: PipelineRun, c) -> dict | None:
    """With `train.init_from=champion`: the champion's bundle, downloaded into the run directory, for
    the training job to start from; None for a cold start (asked for, or nothing to start from)."""
    if c.train.init_from == "none":
        return None
    from tasks.registry import open_registry
    from tasks.tracking import bundle_of

    reg = open_registry(c.tracking, run.workdir, require_shared=False)
    champion = reg.champion()
    if champion is None:
        run.log.info("train.init_from=champion: no champion yet, a cold start")
        run.data["warm_start"] = {"from": None, "note": "no champion yet"}
        return None
    if (reg.version(champion).tags or {}).get("kind") == "baseline":
        run.log.info("train.init_from=champion: the champion (version %d) is a baseline, a cold start", champion)
        run.data["warm_start"] = {"from": None, "note": f"champion version {champion} is a baseline"}
        return None
    bundle = bundle_of(reg.client, reg.name, champion, run.dir / "init")
    return {"bundle": str(bundle), "label": f"{reg.name} v{champion}"}


def select_model(run: PipelineRun, c, data_path: str, views: Path):
    """With `select.auto`: the candidates trained briefly and compared on validation; the run's config
    with the winner's model and training settings (unchanged without select.auto)."""
    from tasks.stages import select_task

    if not c.select.auto:
        run.stop_if_until("select")
        return c
    chosen = run.stage("select", select_task, data_path=data_path, views=views, candidates=c.candidates(),
                       scfg=c.select, seed=c.seed, ecfg=c.eval, run_dir=run.dir).winner
    return c.model_copy(update={"model": chosen.model, "train": chosen.train})


@contextlib.contextmanager
def registry_lock(run: PipelineRun) -> Iterator["Registry"]:
    """The registry, locked: a concurrent run waits here instead of promoting against a champion
    that is about to change."""
    from tasks.registry import open_registry

    registry = open_registry(run.config.tracking, run.workdir)
    with registry.lock(run.log.info):
        yield registry


def attach_reports(run: PipelineRun, registry: "Registry", mlflow_run_id: str) -> None:
    """The A/B report and the run summary onto the MLflow run. The decision (and a promotion) is done
    and recorded by now: a failure here is a warning in the summary, not a failed run."""
    from tasks.tracking import attach_run_report

    try:
        run.summary.save()
        attach_run_report(registry.client, mlflow_run_id, run.dir, run.summary.path, run.data.get("ab") or {},
                          bool(run.data.get("promoted")))
    except Exception as e:  # noqa: BLE001
        run.data.setdefault("warnings", []).append(f"could not attach the A/B report to the MLflow run: {e}")
        run.summary.save()
        run.log.warning("could not attach the A/B report to MLflow run %s: %s", mlflow_run_id, e)
