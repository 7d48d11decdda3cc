"""File paths from the configuration: resolved to absolute paths and checked before a run writes
anything (`flows.config.check_paths` applies these rules to a whole configuration).

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

from pydantic import BaseModel, ConfigDict, Field

from seqrec.errors import ConfigError


class PathsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allowed_roots: list[str] = Field([], description="directories outside the work directory that outputs may be "
                                                     "written to (e.g. a registry shared by several work directories)")


def resolve(p: str | Path) -> Path:
    """Absolute, `~` expanded, symlinks followed (relative paths are relative to the current directory)."""
    return Path(os.path.expanduser(str(p))).resolve()


def inside(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def check_workdir(workdir: str | Path) -> Path:
    wd = resolve(workdir)
    if wd.exists() and not wd.is_dir():
        raise ConfigError(f"--workdir {wd}: must be a directory (a file is in the way)")
    if wd == Path(wd.anchor) or wd == resolve("~"):
        raise ConfigError(f"--workdir {wd}: refusing to use a file-system root or the home directory as the work "
                          "directory (seqrec creates data/, runs/, checkpoints/ ... in it)")
    return wd


def output_path(key: str, value: str, wd: Path, roots: list[Path], kind: str) -> Path:
    p = resolve(value)
    if not any(inside(p, r) for r in [wd, *roots]):
        raise ConfigError(f"{key}: {value} resolves to {p}, outside the work directory {wd}; rule: outputs stay "
                          "inside the work directory unless a parent is listed in paths.allowed_roots")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise ConfigError(f"{key}: {p} must be a directory (a file is in the way)")
    if kind == "file" and p.is_dir():
        raise ConfigError(f"{key}: {p} must be a file (a directory is in the way)")
    return p


def input_path(key: str, value: str, kind: str) -> Path:
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


def file_uri_path(uri: str) -> str | None:
    """The local path of a `file:` URI or a plain path; None for remote stores (s3://, http://, ...)."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if uri.startswith("file:"):
        return uri[len("file:"):]
    return None if "://" in uri else uri
