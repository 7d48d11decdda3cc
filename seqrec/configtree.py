"""Configuration trees: a YAML (or JSON) file, then `dotted.key=value` overrides whose values are
parsed as YAML scalars or lists. Validation against a pydantic model is the caller's
(`flows.config.load_config` for the pipeline, `tasks.train.main` for a training worker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from seqrec.errors import ConfigError


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
