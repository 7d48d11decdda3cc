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
    from tasks.preprocess import read_sequences

    return read_sequences(a).equals(read_sequences(b))


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
    ap.add_argument("--faults", nargs="+", default=["preprocess", "features"])
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    cache = a.out / "cache"
    ref = reference_run(a.out / "ref", cache)
    rows = []
    for fault in a.faults:
        for i in range(a.repeats):
            r = crash_in_data_stage(fault, a.out / f"{fault}-{i}", cache, delay_s=0.25 * i, reference=ref)
            rows.append({k: v for k, v in r.items() if k != "rerun_output"})
            print(json.dumps(rows[-1]), flush=True)
    (a.out / "faults.json").write_text(json.dumps(rows, indent=2))
    df = pd.DataFrame(rows)
    table = df.groupby("stage").agg(trials=("stage", "size"), partial_visible=("partial_visible", "sum"),
                                    half_written_at_kill=("hidden_after_kill", lambda x: int(sum(map(bool, x)))),
                                    rerun_ok=("rerun_rc", lambda x: int((x == 0).sum())),
                                    same_version=("same_version", "sum"), same_sequences=("same_sequences", "sum"),
                                    same_views=("same_views", "sum"))
    print(table.to_string())


if __name__ == "__main__":
    main()
