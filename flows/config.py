"""PipelineConfig: one pydantic model composed of each stage's own config.

Loaded from YAML, then `--set dotted.key=value` overrides (values parsed as YAML scalars/lists),
then Prefect parameters. Unknown keys are errors, not silently ignored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from seqrec.errors import ConfigError
from seqrec.fsutil import flatten
from seqrec.paths import PathsConfig
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


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{p}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects dotted.key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    tree: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p} must be a mapping at the top level")
    for item in overrides or []:
        _set_dotted(tree, *parse_override(item))
    return validate_config(tree, source=str(path) if path else "--set")


def validate_config(tree: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        cfg = PipelineConfig.model_validate(tree)
    except ValidationError as e:
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid configuration ({source}): " + "; ".join(lines)) from None
    # pydantic accepts nan/inf for floats; no setting of this pipeline means anything with them
    bad = [k for k, v in flatten(cfg).items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ConfigError(f"invalid configuration ({source}): {', '.join(bad)}: must be a finite number (got nan/inf)")
    return cfg


