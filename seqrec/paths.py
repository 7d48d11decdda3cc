"""File paths from the configuration: resolved to absolute paths and checked before a run writes
anything (issue 7, security defaults).

Inputs (data files, a GroupLens directory) must exist. Outputs (MLflow store and artifacts, the
registry's promotion log and lock) must resolve, after following symlinks, inside the work
directory or inside a root listed in `paths.allowed_roots`: a config that points a writer at
`/etc`, at `..`, or through a symlink out of the work directory is refused with the key named.
The cache (`data.cache_dir`) is shared between work directories by design and only has to be a
directory.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from seqrec.errors import ConfigError

if TYPE_CHECKING:
    from flows.config import PipelineConfig


class PathsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allowed_roots: list[str] = Field([], description="directories outside the work directory that outputs may be "
                                                     "written to (e.g. a registry shared by several work directories)")


def resolve(p: str | Path) -> Path:
    """Absolute, `~` expanded, symlinks followed (relative paths are relative to the current directory)."""
    return Path(os.path.expanduser(str(p))).resolve()


def _inside(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def check_workdir(workdir: str | Path) -> Path:
    wd = resolve(workdir)
    if wd.exists() and not wd.is_dir():
        raise ConfigError(f"--workdir {wd}: must be a directory (a file is in the way)")
    if wd == Path(wd.anchor) or wd == resolve("~"):
        raise ConfigError(f"--workdir {wd}: refusing to use a file-system root or the home directory as the work "
                          "directory (seqrec creates data/, runs/, checkpoints/ ... in it)")
    return wd


def _output(key: str, value: str, wd: Path, roots: list[Path], kind: str) -> Path:
    p = resolve(value)
    if not any(_inside(p, r) for r in [wd, *roots]):
        raise ConfigError(f"{key}: {value} resolves to {p}, outside the work directory {wd}; rule: outputs stay "
                          "inside the work directory unless a parent is listed in paths.allowed_roots")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise ConfigError(f"{key}: {p} must be a directory (a file is in the way)")
    if kind == "file" and p.is_dir():
        raise ConfigError(f"{key}: {p} must be a file (a directory is in the way)")
    return p


def _input(key: str, value: str, kind: str) -> Path:
    p = resolve(value)
    if glob.has_magic(str(value)):
        return Path(os.path.abspath(os.path.expanduser(value)))  # a pattern: expanded (and checked) at ingest
    if not p.exists():
        raise ConfigError(f"{key}: {value} does not exist (resolved to {p}); rule: input paths must exist")
    if kind == "dir" and not p.is_dir():
        raise ConfigError(f"{key}: {p} must be a directory")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{key}: {p} is not readable")
    return p


def _file_uri(uri: str) -> str | None:
    """The local path of a `file:` URI or a plain path; None for remote stores (s3://, http://, ...)."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if uri.startswith("file:"):
        return uri[len("file:"):]
    return None if "://" in uri else uri


def check_paths(config: "PipelineConfig", workdir: str | Path) -> "PipelineConfig":
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
                setattr(data, key, str(_input(f"data.{key}", getattr(data, key), "any")))
    if data.ml100k_dir:
        data.ml100k_dir = str(_input("data.ml100k_dir", data.ml100k_dir, "dir"))
    if data.cache_dir:
        cache = resolve(data.cache_dir)
        if cache.exists() and not cache.is_dir():
            raise ConfigError(f"data.cache_dir: {cache} must be a directory (a file is in the way)")
        data.cache_dir = str(cache)
    tracking = config.tracking.model_copy()
    uri = tracking.tracking_uri
    if uri and uri.startswith("sqlite:///"):
        db = _output("tracking.tracking_uri", uri[len("sqlite:///"):], wd, roots, "file")
        tracking.tracking_uri = f"sqlite:///{db}"
    if tracking.artifact_location and (local := _file_uri(tracking.artifact_location)) is not None:
        tracking.artifact_location = str(_output("tracking.artifact_location", local, wd, roots, "dir"))
    if tracking.registry_dir:
        tracking.registry_dir = str(_output("tracking.registry_dir", tracking.registry_dir, wd, roots, "dir"))
    return config.model_copy(update={"data": data, "tracking": tracking})
