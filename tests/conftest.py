from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A cache shared by the session (ml-100k fetched at most once); CI may point it elsewhere."""
    d = Path(os.environ.get("SEQREC_CACHE_DIR") or tmp_path_factory.mktemp("cache"))
    os.environ["SEQREC_CACHE_DIR"] = str(d)
    return d


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from tasks.synthetic import generate

    d = tmp_path_factory.mktemp("synth")
    generate(300, 80, 12_000, 7, d)
    return d


def preprocessed_version(src: Path, wd: Path) -> Path:
    """A synthetic log (tasks/synthetic.generate's output) validated and preprocessed into a data version."""
    from tasks.dask_cluster import DaskConfig, dask_client
    from tasks.preprocess import PreprocessConfig, preprocess
    from tasks.sources import SYNTH_SCHEMA, DataConfig, resolve_inputs
    from tasks.validate import validate_processed, validate_raw
    from validation.config import ValidationConfig

    with dask_client(DaskConfig(processes=False, n_workers=1), wd) as client:
        inputs = resolve_inputs(DataConfig(source="files", events=str(src / "events"), users=str(src / "users.parquet"),
                                           items=str(src / "items.parquet"), schema=SYNTH_SCHEMA.model_dump()))
        raw = validate_raw(inputs, ValidationConfig(), client, wd / "run")
        res = preprocess(inputs, PreprocessConfig(), ValidationConfig(), client, wd)
        validate_processed(res, ValidationConfig(), raw, wd / "run")
    return Path(res.path)


@pytest.fixture(scope="session")
def synth_version(synth_dir, tmp_path_factory) -> Path:
    """The small synthetic log preprocessed and validated into a data version (shared by the model,
    metric and distributed-training tests)."""
    return preprocessed_version(synth_dir, tmp_path_factory.mktemp("wd"))


@pytest.fixture(scope="session")
def sparse_synth_version(tmp_path_factory) -> Path:
    """A sparser catalogue: 400 items for the same 12k events (30 events per item, not 150)."""
    from tasks.synthetic import generate

    src = tmp_path_factory.mktemp("synth-sparse")
    generate(300, 400, 12_000, 7, src)
    return preprocessed_version(src, tmp_path_factory.mktemp("wd-sparse"))


@pytest.fixture(scope="session")
def taste_synth_version(tmp_path_factory) -> Path:
    """A log where the user's taste decides most next items (follow 0.1, not 0.45: fixed successors
    only 10% of the time), 1,000 users with 40 events each, 400 items. That taste is what the views
    carry and what a first-order model (Markov) sees only through the last item."""
    from tasks.synthetic import generate

    src = tmp_path_factory.mktemp("synth-taste")
    generate(1000, 400, 40_000, 7, src, follow=0.1)
    return preprocessed_version(src, tmp_path_factory.mktemp("wd-taste"))


def small_events() -> pd.DataFrame:
    """A hand-checkable log: ties on timestamp, an exact duplicate, a short user, unsorted rows."""
    return pd.DataFrame({
        "user_id": ["a", "a", "a", "a", "b", "b", "a", "c", "c", "c", "b"],
        "item_id": ["x", "y", "z", "x", "y", "z", "w", "x", "y", "z", "x"],
        "timestamp": [1_000_000_100, 1_000_000_100, 1_000_000_050, 1_000_000_100, 1_000_000_000,
                      1_000_000_010, 1_000_100_000, 1_000_000_000, 1_000_000_001, 1_000_000_002, 1_000_000_020],
        "event_type": ["view", "click", "view", "view", "view", "view", "purchase", "view", "view", "view", "cart"],
        "value": [1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0, 2.0],
    })


def run_cfg(events: str, users: str | None = None, items: str | None = None, **extra) -> "PipelineConfig":  # noqa: F821
    from flows.config import validate_config

    tree = {"data": {"source": "files", "events": events, "users": users, "items": items},
            "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2}}
    return validate_config(with_changes(tree, **extra))


def with_changes(tree: dict, **changes) -> dict:
    """A deep copy of a config tree with `section__key=value` changes applied."""
    import copy

    tree = copy.deepcopy(tree)
    for key, value in changes.items():
        node = tree
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REGISTRY_SYNTH = {"users": 600, "items": 100, "events": 24_000, "seed": 7}
REGISTRY_BASE = {"data": {"source": "synthetic", "synthetic": REGISTRY_SYNTH},
                 "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2},
                 "model": {"dim": 32, "max_len": 20}, "train": {"batch_size": 64, "threads": 1, "progress": False},
                 "ab": {"baseline": "pop", "latency_users": 30}}


def registry_cfg(**changes):
    from flows.config import validate_config

    return validate_config(with_changes(REGISTRY_BASE, **changes))


@pytest.fixture(scope="session")
def registry_scenario(tmp_path_factory, prefect_harness, cache_dir):
    """Four real training runs into one registry (shared by the registry and serving tests):
    medium (first run, vs the Pop baseline) -> crippled -> strong -> strong again (same seed)."""
    from flows.training import training_flow

    wd = tmp_path_factory.mktemp("registry") / "wd"
    # medium stops at 3 epochs (inside the warm-up) so that strong is clearly better: since the side
    # embeddings start at the id scale 9 epochs already came within noise of 15
    runs = {"medium": registry_cfg(train__epochs=3), "crippled": registry_cfg(train__epochs=1, train__lr=1e-5),
            "strong": registry_cfg(train__epochs=15), "same": registry_cfg(train__epochs=15)}
    out = {name: training_flow(config=cfg, workdir=str(wd), run_id=name) for name, cfg in runs.items()}
    return wd, out


SEQREC = str(Path(sys.executable).with_name("seqrec"))


def seqrec_cli(wd: Path, *args: str, cwd: Path | None = None):
    """`seqrec ARGS --workdir WD` as a user runs it (its own Prefect home, the work directory's store)."""
    import subprocess

    env = {**os.environ, "PREFECT_HOME": str(wd.parent / "prefect-home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([SEQREC, *args, "--workdir", str(wd)], capture_output=True, text=True, timeout=300,
                          cwd=cwd or wd.parent, env=env)


def registry_of(wd: Path):
    """The registry of a work directory's default store."""
    from tasks.registry import open_registry
    from tasks.tracking import TrackingConfig

    return open_registry(TrackingConfig(), wd)


def copy_workdir(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of a work directory to change without touching the original (its registry and MLflow
    store; artifacts stay where the store says). The promotion log's store marker names the
    original store, so the copy starts without one."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "prefect-results", "dask-scratch", *skip))
    (dst / "registry" / "tracking_store.json").unlink(missing_ok=True)
    return dst
