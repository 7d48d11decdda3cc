"""Fault injection for real: `seqrec run` processes killed with SIGKILL at chosen points. Shared by
tests/test_reliability.py (each fault once) and `python -m benchmarks.faults` (each fault N times,
the reliability table in BENCHMARKS.md).

Usage: python -m benchmarks.faults --repeats 3 --out /tmp/faults [--faults preprocess features training]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

SEQREC = str(Path(sys.executable).with_name("seqrec"))
# small enough for a test, large enough that preprocess, validation and features each take ~1 s
CRASH_CFG = {"data": {"source": "synthetic", "synthetic": {"users": 4000, "items": 3000, "events": 400_000, "seed": 3}},
             "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2}}


def seqrec_env(tmp: Path, cache_dir: Path) -> dict:
    env = {**os.environ, "SEQREC_CACHE_DIR": str(cache_dir), "PREFECT_HOME": str(tmp / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    return env


def run_args(cfg: Path, wd: Path, summary: Path | None = None, until: str | None = None) -> list[str]:
    args = [SEQREC, "run", "--config", str(cfg), "--workdir", str(wd)]
    if until:
        args += ["--until", until]
    if summary:
        args += ["--summary-json", str(summary)]
    return args


def start(args: list[str], env: dict) -> subprocess.Popen:
    """In its own process group, so one SIGKILL takes the flow, its Dask cluster and its ephemeral server."""
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], delay_s: float = 0.0, timeout_s: float = 600,
              poll_s: float = 0.01) -> None:
    """SIGKILL the process group `delay_s` after `ready()` first holds; fails if the run ends first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise AssertionError("the run ended before the fault could be injected")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the point of injection")
        time.sleep(poll_s)
    time.sleep(delay_s)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def staging_exists(wd: Path) -> bool:
    return any((wd / "data").glob(".staging-*")) if (wd / "data").is_dir() else False


def in_stage(wd: Path, stage: str, after: str) -> Callable[[], bool]:
    """True while the run's summary says `after` finished and `stage` did not."""
    def check() -> bool:
        for p in (wd / "runs").glob("*/summary.json") if (wd / "runs").is_dir() else []:
            try:
                stages = json.loads(p.read_text())["stages"]
            except (OSError, ValueError, KeyError):
                continue
            if after in stages and stage not in stages:
                return True
        return False
    return check


def checkpoint_epoch(wd: Path) -> int:
    import torch

    for f in (wd / "checkpoints").glob("*/last.pt"):
        try:
            return int(torch.load(f, weights_only=True)["epoch"]) + 1
        except Exception:  # noqa: BLE001 - replaced between glob and load
            return 0
    return 0


def visible_state(wd: Path) -> dict:
    """What a reader sees: data versions and views directories, and whether each is complete."""
    out: dict = {"versions": {}, "views": {}}
    data = wd / "data"
    for v in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")) if data.is_dir() else []:
        out["versions"][v.name] = all((v / f).exists() for f in ("meta.json", "sequences.parquet", "quality",
                                                                  "vocab/items.parquet"))
        for views in sorted(p for p in (v / "views").glob("*") if not p.name.startswith(".")):
            out["views"][f"{v.name}/{views.name}"] = (views / "views.json").is_file()
    return out


def hidden_leftovers(wd: Path) -> list[str]:
    data = wd / "data"
    return sorted(str(p.relative_to(wd)) for p in [*data.glob(".staging-*"), *data.glob("*/views/.*.tmp-*")]) \
        if data.is_dir() else []


def same_sequences(a: Path, b: Path) -> bool:
    from seqrec.catalog import DataVersion

    return DataVersion(a).sequences().equals(DataVersion(b).sequences())


# --------------------------------------------------------------------------- the repeated table


def crash_in_data_stage(stage: str, tmp: Path, cache_dir: Path, delay_s: float, reference: dict) -> dict:
    """Kill `seqrec run` inside preprocessing or feature extraction, then rerun; what did a reader see?"""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CRASH_CFG))
    env = seqrec_env(tmp, cache_dir)
    wd = tmp / "wd"
    victim = start(run_args(cfg, wd, until="features"), env)
    ready = (lambda: staging_exists(wd)) if stage == "preprocess" else in_stage(wd, "features", "validate_processed")
    kill_when(victim, ready, delay_s)
    seen, hidden = visible_state(wd), hidden_leftovers(wd)
    summary = tmp / "again.json"
    again = subprocess.run(run_args(cfg, wd, summary, until="features"), capture_output=True, text=True, env=env,
                           timeout=900)
    s = json.loads(summary.read_text()) if summary.is_file() else {}
    return {"stage": stage, "delay_s": delay_s, "visible_after_kill": seen, "hidden_after_kill": hidden,
            "partial_visible": not all(seen["versions"].values()) or not all(seen["views"].values()),
            "rerun_rc": again.returncode, "rerun_output": (again.stdout + again.stderr)[-2000:],
            "data_version": s.get("data_version"), "views": s.get("views_path", "").split("/")[-1],
            "same_version": s.get("data_version") == reference["data_version"],
            "same_views": s.get("views_path", "").split("/")[-1] == reference["views_path"].split("/")[-1],
            "same_sequences": bool(s) and same_sequences(Path(s["data_path"]), Path(reference["data_path"])),
            "leftovers_after_rerun": hidden_leftovers(wd)}


# a small training job: long enough to be killed mid-training, short enough to repeat
TRAIN_CFG = {"data": {"source": "synthetic", "synthetic": {"users": 600, "items": 100, "events": 24_000, "seed": 7}},
             "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2},
             "model": {"dim": 32, "max_len": 20},
             "train": {"batch_size": 64, "threads": 1, "epochs": 14, "patience": 20, "progress": True}}
DECIDED = ("decision", "reasons", "lift", "ci_low", "ci_high", "p_value", "test")


def full_run(cfg_tree: dict, tmp: Path, cache_dir: Path, name: str = "ref") -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(cfg_tree))
    out = subprocess.run(run_args(cfg, tmp / name, tmp / f"{name}.json"), capture_output=True, text=True,
                         env=seqrec_env(tmp, cache_dir), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp / f"{name}.json").read_text())


def crash_in_training(tmp: Path, cache_dir: Path, after_epoch: int, reference: dict) -> dict:
    """Kill after the `after_epoch` checkpoint; the rerun must resume and end exactly like `reference`."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN_CFG))
    env = seqrec_env(tmp, cache_dir)
    wd = tmp / "wd"
    kill_when(start(run_args(cfg, wd), env), lambda: checkpoint_epoch(wd) >= after_epoch, poll_s=0.05)
    killed_at = checkpoint_epoch(wd)
    again = subprocess.run(run_args(cfg, wd, tmp / "again.json"), capture_output=True, text=True, env=env, timeout=900)
    a = json.loads((tmp / "again.json").read_text()) if again.returncode == 0 else {}
    r = reference
    return {"fault": "training", "killed_after_epoch": killed_at, "rerun_rc": again.returncode,
            "rerun_output": (again.stdout + again.stderr)[-2000:],
            "resumed": "resuming from checkpoint" in again.stdout + again.stderr,
            "same_version": a.get("data_version") == r["data_version"],
            "same_losses": [h["loss"] for h in a.get("history", [])] == [h["loss"] for h in r["history"]],
            "same_metrics": bool(a) and a["metrics"]["test"] == r["metrics"]["test"]
            and a["metrics"]["validation"] == r["metrics"]["validation"],
            "same_decision": bool(a) and {k: a["ab"][k] for k in DECIDED} == {k: r["ab"][k] for k in DECIDED}
            and a["promoted"] == r["promoted"],
            "checkpoint_left": bool(list((wd / "checkpoints").glob("*/last.pt")))}


def registry_locked(wd: Path) -> Callable[[], bool]:
    """True while some process holds the registry lock (the run is inside compare + promote)."""
    from filelock import FileLock, Timeout

    path = wd / "registry" / "registry.lock"

    def check() -> bool:
        if not path.exists():
            return False
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False
    return check


def crash_in_promote(tmp: Path, cache_dir: Path) -> dict:
    """Kill while the run holds the registry lock, after registering; then rerun with another seed."""
    from tasks.registry import open_registry
    from tasks.tracking import TrackingConfig

    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "cfg.yaml"
    # a long bootstrap keeps the compare stage open long enough to be hit
    cfg.write_text(yaml.safe_dump({**TRAIN_CFG, "train": {**TRAIN_CFG["train"], "epochs": 4, "progress": False},
                                   "ab": {"baseline": "pop", "latency_users": 20, "n_bootstrap": 400_000}}))
    env = seqrec_env(tmp, cache_dir)
    wd = tmp / "wd"
    kill_when(start(run_args(cfg, wd), env), registry_locked(wd), poll_s=0.02)
    reg = open_registry(TrackingConfig(), wd)
    after_kill = {"versions": [int(v.version) for v in reg.versions()], "champion": reg.champion()}
    again = subprocess.run([*run_args(cfg, wd, tmp / "again.json"), "--set", "seed=1", "--set", "ab.n_bootstrap=2000"],
                           capture_output=True, text=True, env=env, timeout=900)
    reg = open_registry(TrackingConfig(), wd)
    stack = reg.champion_stack()
    champion = reg.champion()
    return {"fault": "promote", "after_kill": after_kill, "rerun_rc": again.returncode,
            "rerun_output": (again.stdout + again.stderr)[-2000:],
            "alias_matches_log": champion == (stack[-1] if stack else None),
            "champion_passed": champion is None or reg.version(champion).tags.get("ab.decision") == "pass",
            "killed_version_undecided_never_champion": champion != 1 or reg.version(1).tags.get("ab.decision") == "pass"}


def reference_run(tmp: Path, cache_dir: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CRASH_CFG))
    out = subprocess.run(run_args(cfg, tmp / "wd", tmp / "s.json", until="features"), capture_output=True,
                         text=True, env=seqrec_env(tmp, cache_dir), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp / "s.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/seqrec-faults"))
    ap.add_argument("--faults", nargs="+", default=["preprocess", "features", "training", "promote"])
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    cache = a.out / "cache"
    rows = []
    ref = reference_run(a.out / "ref", cache) if {"preprocess", "features"} & set(a.faults) else None
    train_ref = full_run(TRAIN_CFG, a.out / "train-ref", cache) if "training" in a.faults else None
    for fault in a.faults:
        for i in range(a.repeats):
            tmp = a.out / f"{fault}-{i}"
            if fault in ("preprocess", "features"):
                r = crash_in_data_stage(fault, tmp, cache, delay_s=0.25 * i, reference=ref)
            elif fault == "training":
                r = crash_in_training(tmp, cache, after_epoch=2 + 3 * i, reference=train_ref)
            else:
                r = crash_in_promote(tmp, cache)
            rows.append({"fault": fault, **{k: v for k, v in r.items() if k != "rerun_output"}})
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(tmp, ignore_errors=True)
    (a.out / "faults.json").write_text(json.dumps(rows, indent=2))
    for fault, group in pd.DataFrame(rows).groupby("fault", sort=False):
        checks = [c for c in group.columns if group[c].map(lambda v: isinstance(v, bool)).all()]
        print(f"{fault}: {len(group)} trials, rerun ok {int((group['rerun_rc'] == 0).sum())}, "
              + ", ".join(f"{c} {int(group[c].sum())}" for c in checks))


if __name__ == "__main__":
    main()
