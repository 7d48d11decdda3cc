"""File paths from the configuration: resolved to absolute paths and checked before a run writes
anything (`flows.config.check_paths` applies these rules to a whole configuration).

Inputs (data files, a GroupLens directory) must exist. Outputs (MLflow store and artifacts, the
registry's promotion log and lock) must resolve, after following symlinks, inside the work
directory or inside a root listed in `paths.allowed_roots`: a config that points a writer at
`/etc`, at `..`, or through a symlink out of the work directory is refused with the key named.
The cache (`data.cache_dir`) is shared between work directories by design and only has to be a
directory. Network addresses (the Dask scheduler, a tracking server) must use an allowed scheme and
name an allowed host (`check_uri`); names that become file names must be plain names (`check_name`).
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

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
    """The local path of a `file:` URI or a plain path; None for remote stores (s3://, http://,
    mlflow-artifacts:/, ...)."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if uri.startswith("file:"):
        return uri[len("file:"):]
    return None if "://" in uri or URI_SCHEME.match(uri) else uri


URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # two characters at least: not a drive letter


def check_uri(key: str, uri: str, schemes: list[str], hosts: list[str], rule_keys: tuple[str, str],
              need_host: bool = False) -> str:
    """The scheme of `uri` (lower case) after checking it is in `schemes` and its host (if any, or
    always with `need_host`) is in `hosts`; ConfigError naming the key and the rule (and the config
    keys of the two lists, `rule_keys`) otherwise."""
    allowed = ", ".join(schemes) or "none"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as e:
        raise ConfigError(f"{key}: {uri!r} is not a valid address ({e})") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise ConfigError(f"{key}: {uri!r} names no scheme; rule: scheme://host[:port], scheme one of {allowed}")
    if scheme not in [s.lower() for s in schemes]:
        raise ConfigError(f"{key}: scheme {scheme!r} is not allowed; rule: one of {allowed} ({rule_keys[0]})")
    host = parts.hostname or ""
    if (host or need_host) and host not in {h.lower() for h in hosts}:
        raise ConfigError(f"{key}: host {host or '(none)'!r} is not allowed; rule: one of {', '.join(hosts) or 'none'} "
                          f"({rule_keys[1]})")
    return scheme


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(key: str, value: str) -> str:
    """A value used as a file or directory name: letters, digits, '.', '_', '-', not starting with
    '.' (no separators, no `..`, nothing hidden)."""
    if not NAME.fullmatch(value):
        raise ConfigError(f"{key}: {value!r} is not a plain name; rule: letters, digits, '.', '_', '-' (at most 128, "
                          "not starting with '.'), since it names files in the work directory")
    return value
