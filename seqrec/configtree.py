"""Configuration trees: a YAML (or JSON) file, then `dotted.key=value` overrides whose values are
parsed as YAML scalars or lists, validated against a pydantic model with one readable error
(`flows.config.load_config` for the pipeline, `tasks.train.main` for a training worker)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from seqrec.errors import ConfigError
from seqrec.fsutil import flatten

M = TypeVar("M", bound=BaseModel)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
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


def load_tree(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The file's mapping (empty without one) with the overrides applied."""
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
        set_dotted(tree, *parse_override(item))
    return tree


def validate_tree(model: type[M], tree: dict[str, Any], source: str = "config") -> M:
    """`tree` as a `model`; every problem named by its dotted key in one ConfigError."""
    try:
        cfg = model.model_validate(tree)
    except ValidationError as e:
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid configuration ({source}): " + "; ".join(lines)) from None
    # pydantic accepts nan/inf for floats; no setting of this pipeline means anything with them
    bad = [k for k, v in flatten(cfg).items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ConfigError(f"invalid configuration ({source}): {', '.join(bad)}: must be a finite number (got nan/inf)")
    return cfg
