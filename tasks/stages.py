"""The pipeline's stages as Prefect tasks: each a thin wrapper around a plain function of its
module, given its own config section, returning a small typed result.

A result knows what it adds to the run summary (`summary()`) and the line a person reads in the
log (`describe()`); `flows.run.PipelineRun.stage` records both, once, for every stage. Pure stages
(preprocess, features) are cached by the content hash of what they compute; every other stage has
side effects and is never cached. Their persisted results are typed JSON, never pickles
(`TypedJSONSerializer`, `CheckedResultStorage`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from seqrec.errors import SeqrecError
from seqrec.fsutil import stable_hash
from tasks import preprocess as pre
from tasks import sources, validate
from tasks.dask_cluster import stage_client
from tasks.features import ViewsConfig
from tasks.results import TypedJSONSerializer
from tasks.validate import TableResult
from validation.config import ValidationConfig


# ---------------------------------------------------------------------------------------- data
@task(name="ingest", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=lambda t, r, s: not isinstance(s.result(raise_on_failure=False), SeqrecError))
def ingest_task(cfg: sources.DataConfig) -> sources.ResolvedInputs:
    return sources.resolve_inputs(cfg)


@dataclass
class RawGate:
    """The raw-data gate's per-table results and where its report lies."""

    tables: list[TableResult]
    report_dir: Path

    @property
    def quarantine_rules(self) -> list | None:
        return next(r for r in self.tables if r.table == "events").quarantine_rules or None

    def summary(self) -> dict[str, Any]:
        return {"quality": {"report_dir": str(self.report_dir / "quality"),
                            "tables": {r.table: {"rows": r.rows, "success": r.success} for r in self.tables}}}


@task(name="validate_raw", cache_policy=NO_CACHE)
def validate_raw_task(inputs: sources.ResolvedInputs, vcfg: ValidationConfig, report_dir: Path) -> RawGate:
    with stage_client() as client:
        return RawGate(validate.validate_raw(inputs, vcfg, client, report_dir), report_dir)


def _preprocess_key(_ctx, p: dict) -> str:
    # the data version is the content hash of the raw inputs + preprocessing config
    version = pre.data_version(p["inputs"], p["pcfg"], p["vcfg"], p["split"], p["qrules"])
    return f"preprocess-{version}-{stable_hash(str(p['workdir']), n=8)}"


@task(name="preprocess", cache_key_fn=_preprocess_key, persist_result=True, result_serializer=TypedJSONSerializer())
def preprocess_task(inputs: sources.ResolvedInputs, pcfg: pre.PreprocessConfig, vcfg: ValidationConfig,
                    workdir: Path, qrules: list | None, split: pre.SplitConfig) -> pre.PreprocessResult:
    with stage_client() as client:
        return pre.preprocess(inputs, pcfg, vcfg, client, workdir, qrules, split)


@task(name="validate_processed", cache_policy=NO_CACHE)
def validate_processed_task(result: pre.PreprocessResult, vcfg: ValidationConfig, raw: RawGate,
                            report_dir: Path) -> TableResult:
    with stage_client() as client:
        return validate.validate_processed(result, vcfg, raw.tables, report_dir, client)


# ---------------------------------------------------------------------------------------- views
@task(name="item_view", cache_policy=NO_CACHE)
def item_view_task(data_path: Path, vcfg: ViewsConfig, cache_dir: Path) -> dict:
    from tasks.features import item_view

    return item_view(Path(data_path), vcfg, cache_dir)


@task(name="user_view", cache_policy=NO_CACHE)
def user_view_task(data_path: Path, vcfg: ViewsConfig) -> dict:
    from tasks.features import user_view

    return user_view(Path(data_path), vcfg)


@task(name="sequence_view", cache_policy=NO_CACHE)
def sequence_view_task(data_path: Path, vcfg: ViewsConfig) -> dict:
    from tasks.features import sequence_view

    return sequence_view(Path(data_path), vcfg)


VIEW_TASKS = {"item_view": item_view_task, "user_view": user_view_task, "sequence_view": sequence_view_task}


def _features_key(_ctx, p: dict) -> str:
    from tasks.features import views_path

    return f"features-{stable_hash(str(views_path(Path(p['data_path']), p['vcfg'])), n=16)}"


@task(name="features", cache_key_fn=_features_key, persist_result=True, result_serializer=TypedJSONSerializer())
def features_task(data_path: str, vcfg: ViewsConfig, views: tuple | None) -> str:
    """The three views' outputs written as one views directory (atomically); its path. Without
    `views`: the directory must exist (a cache lookup)."""
    from tasks.features import views_path, write_views_dir

    out = views_path(Path(data_path), vcfg)
    if views is None:
        if not out.is_dir():
            raise RuntimeError(f"views {out} expected to exist")
        return str(out)
    return str(write_views_dir(Path(data_path), vcfg, *views))


@dataclass
class ViewsResult:
    path: Path
    reused: bool

    def summary(self) -> dict[str, Any]:
        return {"views_path": str(self.path), "views_reused": self.reused}


# ---------------------------------------------------------------------------------------- model
@dataclass
class Trained:
    record: dict[str, Any]
    history: list[dict] = field(default_factory=list)

    @property
    def model_path(self) -> Path:
        return Path(self.record["model_path"])

    def summary(self) -> dict[str, Any]:
        return {"history": self.history, "training": self.record}


@task(name="drift", cache_policy=NO_CACHE)
def drift_task(dcfg, tracking, workdir: Path, data_path: str, run_dir: Path):
    from tasks.drift import drift_gate

    return drift_gate(dcfg, tracking, workdir, Path(data_path), run_dir, log=get_run_logger().warning)


@task(name="select", cache_policy=NO_CACHE)
def select_task(data_path: str, views: Path, candidates: list, scfg, seed: int, ecfg, run_dir: Path):
    from tasks.select import select

    return select(Path(data_path), views, candidates, scfg, seed, bool(ecfg.exclude_seen), ecfg.item_chunk, run_dir,
                  log=get_run_logger().info)


@task(name="train", cache_policy=NO_CACHE)
def train_task(data_path: str, views: Path, mcfg, tcfg, seed: int, ecfg, workdir: Path, run_dir: Path,
               init: dict | None = None) -> Trained:
    from tasks.train import train_in_workdir

    out = train_in_workdir(Path(data_path), views, mcfg, tcfg, seed, ecfg, workdir, run_dir, log=get_run_logger().info,
                           init=init)
    history = out.pop("history")
    return Trained(out, history)


@dataclass
class Evaluated:
    record: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        r = self.record
        return {"metrics": {k: r[k] for k in ("validation", "test", "aux")}, "baselines": r["baselines"],
                "per_user_metrics": r["per_user_metrics"]}

    def describe(self) -> str:
        headline = {k: round(v, 4) for k, v in self.record["test"].items() if k in ("ndcg@10", "hr@10", "mrr@10")}
        return f"test: {headline}"


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(data_path: str, views: Path, mcfg, tcfg, ecfg, model_path: Path, run_dir: Path) -> Evaluated:
    from tasks.train import evaluate

    return Evaluated(evaluate(Path(data_path), views, mcfg, tcfg, ecfg, model_path, run_dir))


# ---------------------------------------------------------------------------------------- registry
@dataclass
class Registered:
    record: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.record["version"])

    @property
    def mlflow_run_id(self) -> str:
        return self.record["mlflow_run_id"]

    def summary(self) -> dict[str, Any]:
        r = self.record
        return {"model": {k: r[k] for k in ("name", "version", "tracking_uri")},
                "mlflow": {k: r[k] for k in ("mlflow_run_id", "experiment_id", "model_uri")}}

    def describe(self) -> str:
        r = self.record
        return f"registered {r['name']} version {r['version']} (alias challenger), MLflow run {r['mlflow_run_id']}"


@task(name="register", cache_policy=NO_CACHE)
def register_task(tracking, mcfg, exclude_seen: bool, params: dict, flat_params: dict, workdir: Path,
                  run_dir: Path, summary: dict, data_path: str, views: Path, model_path: Path) -> Registered:
    from prefect.runtime import flow_run

    from tasks.registry import register_version

    return Registered(register_version(tracking, mcfg, exclude_seen, params, flat_params, workdir, run_dir, summary,
                                       Path(data_path), views, model_path, flow_run.get_id()))


AB_SUMMARY_KEYS = ("decision", "reasons", "baseline", "reference_version", "mode", "primary_metric", "threshold",
                   "lift", "relative_lift", "ci_low", "ci_high", "p_value", "test", "alternative", "n_users",
                   "shares", "guardrails", "latency")


@dataclass
class Compared:
    decision: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {"ab": {k: self.decision[k] for k in AB_SUMMARY_KEYS}}

    def describe(self) -> str:
        d = self.decision
        if d["lift"] is None:  # refused: no comparison was made
            return f"A/B vs {d['baseline']}: {d['decision']} {'; '.join(d['reasons'])}"
        return (f"A/B vs {d['baseline']}: lift {d['lift']:+.5f} [{d['ci_low']:+.5f}, {d['ci_high']:+.5f}], "
                f"p={d['p_value']:.3g} -> {d['decision']} {'; '.join(d['reasons'])}")


@task(name="compare", cache_policy=NO_CACHE)
def compare_task(abcfg, tracking, workdir: Path, data_path: str, run_dir: Path, summary: dict, version: int,
                 exclude_seen: bool, batch_size: int, seed: int) -> Compared:
    from tasks.ab import run_ab
    from tasks.registry import open_registry

    return Compared(run_ab(abcfg, open_registry(tracking, workdir), Path(data_path), run_dir, summary, version,
                           run_dir / "bundle", exclude_seen, batch_size, seed, get_run_logger().info))


@dataclass
class Promoted:
    promoted: bool  # this run's network version became champion
    champion: int | None
    baseline: dict[str, Any] | None = None  # the baseline registered and promoted instead (no champion before)

    def summary(self) -> dict[str, Any]:
        return {"promoted": self.promoted, "champion": self.champion,
                **({"baseline_champion": self.baseline} if self.baseline else {})}

    def describe(self) -> str:
        if self.baseline:
            return self.baseline["reason"]
        return f"champion: version {self.champion}" + (" (promoted now)" if self.promoted else " (unchanged)")


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(tracking, abcfg, workdir: Path, data_path: str, run_dir: Path, summary: dict, version: int,
                 decision: dict, mlflow_run_id: str, exclude_seen: bool) -> Promoted:
    """Promote `version` when its A/B passed. Otherwise, on a first run whose network lost against
    the baseline, the baseline itself is registered and promoted (`ab.baseline_champion`)."""
    from prefect.runtime import flow_run

    from tasks.registry import baseline_champion, open_registry, promote_if_passed

    registry = open_registry(tracking, workdir)
    logger = get_run_logger()
    promoted = promote_if_passed(registry, version, decision, mlflow_run_id, logger.info, logger.warning)
    baseline = None if promoted else baseline_champion(
        tracking, abcfg, registry, workdir, run_dir, summary, Path(data_path), version, decision, mlflow_run_id,
        exclude_seen, flow_run.get_id(), logger.info, logger.warning)
    return Promoted(promoted, registry.champion(), baseline)
