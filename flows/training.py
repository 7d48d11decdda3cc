"""The training flow: ingest -> validate raw -> preprocess -> validate processed -> features ->
drift -> [select] -> train -> evaluate -> register -> compare -> promote.

Composition only: which stage, in what order, with what config section. Per-stage bookkeeping
(timing, the run summary, `--until`, artifacts) is flows/run.py's; the stages' tasks are
tasks/stages.py. Data stages run on the pipeline's Dask cluster; model stages run in the flow
process: training is one long task that does not use the cluster, the GPU (if any) sits with the
flow, and on a worker process it measured 1.6x slower (BENCHMARKS.md, orchestration).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows import stages
from flows.artifacts import ab_artifact
from flows.config import PipelineConfig
from flows.run import STAGES, PipelineRun, artifact
from seqrec.fsutil import flatten
from tasks.stages import (compare_task, evaluate_task, ingest_task, promote_task, register_task, train_task,
                          validate_raw_task)

__all__ = ["STAGES", "training_flow"]


@flow(name="seqrec-training", log_prints=True)
def training_flow(config: PipelineConfig = PipelineConfig(), workdir: str = ".seqrec", run_id: str | None = None,  # noqa: B008
                  until: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Train, evaluate, register, compare and (if the A/B passes) promote; a first run whose network
    loses against the baseline promotes the baseline instead. `refresh` recomputes the cached pure
    stages (preprocess, features) even when their content hash is unchanged."""
    with PipelineRun(config, workdir, run_id, until, refresh) as run:
        c, wd = run.config, run.workdir
        inputs = run.stage("ingest", ingest_task, cfg=c.data)
        with run.cluster() as pool:
            raw = run.stage("validate_raw", validate_raw_task, on=pool, inputs=inputs, vcfg=c.validation,
                            report_dir=run.dir)
            data = stages.data_version(run, pool, inputs, raw)
            views = stages.views(run, pool, data).path
        c = stages.with_protocol(run, data)  # eval.exclude_seen decided on this data version
        stages.drift(run, data)  # today's data against the champion's: report, and drift.mode=stop refuses
        c = stages.select_model(run, c, data.path, views)  # select.auto: the model chosen on validation
        ecfg = c.eval
        model = run.stage("train", train_task, data_path=data.path, views=views, mcfg=c.model, tcfg=c.train,
                          seed=c.seed, ecfg=ecfg, workdir=wd, run_dir=run.dir, init=stages.warm_start(run, c))
        run.stage("evaluate", evaluate_task, data_path=data.path, views=views, mcfg=c.model, tcfg=c.train, ecfg=ecfg,
                  model_path=model.model_path, run_dir=run.dir)
        version = run.stage("register", register_task, tracking=c.tracking, mcfg=c.model,
                            exclude_seen=ecfg.exclude_seen, params=c.model_dump(mode="json", by_alias=True),
                            flat_params=flatten(c), workdir=wd, run_dir=run.dir, summary=run.data,
                            data_path=data.path, views=views, model_path=model.model_path)
        with stages.registry_lock(run) as registry:  # compare + promote never act on a stale champion
            ab = run.stage("compare", compare_task, abcfg=c.ab, tracking=c.tracking, workdir=wd, data_path=data.path,
                           run_dir=run.dir, summary=run.data, version=version.version,
                           exclude_seen=ecfg.exclude_seen, batch_size=ecfg.batch_size, seed=c.seed)
            run.stage("promote", promote_task, tracking=c.tracking, abcfg=c.ab, workdir=wd, data_path=data.path,
                      run_dir=run.dir, summary=run.data, version=version.version, decision=ab.decision,
                      mlflow_run_id=version.mlflow_run_id, exclude_seen=ecfg.exclude_seen)
        artifact(ab_artifact, run.data)
        stages.attach_reports(run, registry, version.mlflow_run_id)
    return run.data
