"""PipelineConfig: one pydantic model composed of each stage's own config.

Loaded from YAML, then `--set dotted.key=value` overrides (values parsed as YAML scalars/lists),
then Prefect parameters. Unknown keys are errors, not silently ignored. `check_paths` resolves and
checks every path a configuration names before a run writes anything (rules: seqrec.paths).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from seqrec.configtree import load_tree, validate_tree
from seqrec.errors import ConfigError
from seqrec.paths import PathsConfig, check_workdir, file_uri_path, input_path, output_path, resolve
from seqrec.servers import ServerConfig
from models.net import ModelConfig
from models.train import TrainConfig
from tasks.ab import ABConfig
from tasks.dask_cluster import DaskConfig
from tasks.features import ViewsConfig
from tasks.preprocess import PreprocessConfig
from tasks.sources import DataConfig
from tasks.tracking import TrackingConfig
from tasks.train import EvalConfig
from validation.config import ValidationConfig


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

    @model_validator(mode="after")
    def _ab_baseline_is_evaluated(self) -> "PipelineConfig":
        if self.ab.baseline not in self.eval.baselines:
            raise ValueError(f"ab.baseline '{self.ab.baseline}' must be one of eval.baselines {self.eval.baselines}")
        return self

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
    tracking = config.tracking.model_copy()
    uri = tracking.tracking_uri
    if uri and uri.startswith("sqlite:///"):
        db = output_path("tracking.tracking_uri", uri[len("sqlite:///"):], wd, roots, "file")
        tracking.tracking_uri = f"sqlite:///{db}"
    if tracking.artifact_location and (local := file_uri_path(tracking.artifact_location)) is not None:
        tracking.artifact_location = str(output_path("tracking.artifact_location", local, wd, roots, "dir"))
    if tracking.registry_dir:
        tracking.registry_dir = str(output_path("tracking.registry_dir", tracking.registry_dir, wd, roots, "dir"))
    return config.model_copy(update={"data": data, "tracking": tracking})
