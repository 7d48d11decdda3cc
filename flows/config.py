"""PipelineConfig: one pydantic model composed of each stage's own config.

Loaded from YAML, then `--set dotted.key=value` overrides (values parsed as YAML scalars/lists),
then Prefect parameters. Unknown keys are errors, not silently ignored. `check_paths` resolves and
checks every path, address and file name a configuration names before a run writes anything (rules:
seqrec.paths): a deployment's `config` parameter can set all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from seqrec.configtree import load_tree, validate_tree
from seqrec.errors import ConfigError
from seqrec.paths import (PathsConfig, check_name, check_uri, check_workdir, file_uri_path, input_path, output_path,
                          resolve)
from seqrec.servers import ServerConfig
from models.net import ModelConfig
from serving.config import ServeConfig
from models.train import TrainConfig
from tasks.ab import ABConfig
from tasks.dask_cluster import DaskConfig
from tasks.drift import DriftConfig
from tasks.features import ViewsConfig
from tasks.preprocess import PreprocessConfig
from tasks.select import Candidate, SelectConfig, candidate_trees
from tasks.sources import DataConfig
from tasks.tracking import TrackingConfig
from tasks.train import EvalConfig
from validation.config import ValidationConfig


# SASRec-CE's training (Klenitskiy & Vasilev 2023): Adam (AdamW without decay), lr 1e-3, batch 128,
# a constant rate, trained until early stopping on validation ends it (train.patience): at lr 1e-3
# 60 epochs were not enough on ml-100k (seed 0 still improving at the cap)
TRAIN_PRESETS: dict[str, dict] = {
    "sasrec-ce": {"lr": 1e-3, "batch_size": 128, "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0.0,
                  "epochs": 300},
}


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    dask: DaskConfig = DaskConfig()
    views: ViewsConfig = ViewsConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    ab: ABConfig = ABConfig()
    server: ServerConfig = ServerConfig()
    paths: PathsConfig = PathsConfig()
    select: SelectConfig = SelectConfig()
    serve: ServeConfig = ServeConfig()
    drift: DriftConfig = DriftConfig()

    @model_validator(mode="after")
    def _ab_baseline_is_evaluated(self) -> "PipelineConfig":
        if self.ab.baseline not in self.eval.baselines:
            raise ValueError(f"ab.baseline '{self.ab.baseline}' must be one of eval.baselines {self.eval.baselines}")
        return self

    @model_validator(mode="after")
    def _preset_trains_as_published(self) -> "PipelineConfig":
        """`model.preset` also sets the training its authors used, where train.* is not set explicitly."""
        want = TRAIN_PRESETS.get(self.model.preset or "", {})
        unset = {k: v for k, v in want.items() if k not in self.train.model_fields_set}
        if unset:
            self.train = self.train.model_copy(update=unset)
        return self

    @model_validator(mode="after")
    def _views_serve_every_candidate(self) -> "PipelineConfig":
        """With select.auto the run's views must carry what any candidate needs (transition tables)."""
        if self.select.auto:
            lags = max(c.model.transition_lags for c in self.candidates())
            if lags > self.views.transition_lags and "transition_lags" not in self.views.model_fields_set:
                self.views = self.views.model_copy(update={"transition_lags": lags})
        return self

    def candidates(self) -> list[Candidate]:
        """The model-selection candidates (tasks/select.py): the configured model first, then each
        `select.candidates` entry applied to what this config sets (so a preset fills the rest)."""
        trees = candidate_trees(self.model_dump(mode="json", exclude_unset=True, by_alias=True), self.select)
        out = []
        for name, tree in trees.items():
            cfg = validate_tree(PipelineConfig, tree, f"select.candidates.{name}")
            out.append(Candidate(name, self.select.candidates.get(name, []), cfg.model, cfg.train))
        return out

    @model_validator(mode="after")
    def _views_carry_the_transition_lags(self) -> "PipelineConfig":
        need, have = self.model.transition_lags, self.views.transition_lags
        if need > have:
            if "transition_lags" in self.views.model_fields_set:
                raise ValueError(f"model.transition_lags={need} needs views.transition_lags >= {need} (set to {have})")
            self.views = self.views.model_copy(update={"transition_lags": need})
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    return validate_config(load_tree(path, overrides), source=str(path) if path else "--set")


def validate_config(tree: dict[str, Any], source: str = "config") -> PipelineConfig:
    return validate_tree(PipelineConfig, tree, source)


def check_paths(config: PipelineConfig, workdir: str | Path) -> PipelineConfig:
    """The config with every local path absolute and checked (raises ConfigError naming the key)."""
    wd = check_workdir(workdir)
    roots = [resolve(r) for r in config.paths.allowed_roots]
    for key, r in zip(config.paths.allowed_roots, roots):
        if r == Path(r.anchor):
            raise ConfigError(f"paths.allowed_roots: {key} is a file-system root; name a directory")
    data = config.data.model_copy()
    if data.source == "files":
        for key in ("events", "users", "items"):
            if getattr(data, key):
                setattr(data, key, str(input_path(f"data.{key}", getattr(data, key), "any")))
    if data.ml100k_dir:
        data.ml100k_dir = str(input_path("data.ml100k_dir", data.ml100k_dir, "dir"))
    if data.cache_dir:
        cache = resolve(data.cache_dir)
        if cache.exists() and not cache.is_dir():
            raise ConfigError(f"data.cache_dir: {cache} must be a directory (a file is in the way)")
        data.cache_dir = str(cache)
    tracking = check_tracking(config.tracking, wd, roots)
    dask = config.dask.model_copy()
    if dask.address:
        check_uri("dask.address", dask.address, dask.allowed_schemes, dask.allowed_hosts,
                  ("dask.allowed_schemes", "dask.allowed_hosts"), need_host=True)
    if dask.local_directory:
        dask.local_directory = str(output_path("dask.local_directory", dask.local_directory, wd, roots, "dir"))
    for name, kind in WORKDIR_OUTPUTS.items():
        output_path(f"<workdir>/{name}", str(wd / name), wd, roots, kind)
    serve = config.serve.model_copy()
    if serve.store_path:
        serve.store_path = str(output_path("serve.store_path", serve.store_path, wd, roots, "file"))
    return config.model_copy(update={"data": data, "tracking": tracking, "dask": dask, "serve": serve})


# what seqrec writes in a work directory itself: a symlink there must not lead a writer elsewhere
WORKDIR_OUTPUTS = {"data": "dir", "runs": "dir", "checkpoints": "dir", "prefect-results": "dir", "mlartifacts": "dir",
                   "mlflow.db": "file", "registry": "dir", "scores": "dir", "dask-scratch": "dir",
                   "serving": "dir"}


def check_tracking(tracking: TrackingConfig, wd: Path, roots: list[Path]) -> TrackingConfig:
    """The tracking section with its store, artifact root and registry directory checked: local ones
    inside the work directory (or an allowed root), network ones on an allowed scheme and host."""
    tracking = tracking.model_copy()
    check_name("tracking.model_name", tracking.model_name)  # names score files and registry filters
    if uri := tracking.tracking_uri:
        scheme = check_uri("tracking.tracking_uri", uri, tracking.allowed_schemes, tracking.allowed_hosts,
                           ("tracking.allowed_schemes", "tracking.allowed_hosts"))
        if scheme == "sqlite":
            if not uri.startswith("sqlite:///"):
                raise ConfigError(f"tracking.tracking_uri: {uri!r}; rule: a SQLite store is sqlite:///<path of a file>")
            db = output_path("tracking.tracking_uri", uri[len("sqlite:///"):], wd, roots, "file")
            tracking.tracking_uri = f"sqlite:///{db}"
        elif scheme == "file":
            store = output_path("tracking.tracking_uri", file_uri_path(uri) or "", wd, roots, "dir")
            tracking.tracking_uri = store.as_uri()
    if loc := tracking.artifact_location:
        if (local := file_uri_path(loc)) is not None:  # a path or a file: URI
            if loc.startswith("file:") and "file" not in tracking.artifact_schemes:
                raise ConfigError("tracking.artifact_location: scheme 'file' is not allowed; rule: one of "
                                  f"{', '.join(tracking.artifact_schemes)} (tracking.artifact_schemes)")
            tracking.artifact_location = str(output_path("tracking.artifact_location", local, wd, roots, "dir"))
        else:
            check_uri("tracking.artifact_location", loc, tracking.artifact_schemes, tracking.allowed_hosts,
                      ("tracking.artifact_schemes", "tracking.allowed_hosts"))
    if tracking.registry_dir:
        tracking.registry_dir = str(output_path("tracking.registry_dir", tracking.registry_dir, wd, roots, "dir"))
    return tracking
