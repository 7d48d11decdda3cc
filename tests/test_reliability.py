"""Faults injected for real: a `seqrec run` killed with SIGKILL mid-training is resumed by the next
run, which ends with exactly the metrics of an uninterrupted run with the same seed (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

SEQREC = str(Path(sys.executable).with_name("seqrec"))
CFG = {"data": {"source": "synthetic", "synthetic": {"users": 600, "items": 100, "events": 24_000, "seed": 7}},
       "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2},
       "model": {"dim": 32, "max_len": 20},
       "train": {"batch_size": 64, "threads": 1, "epochs": 14, "patience": 20, "progress": True}}


def _env(tmp: Path, cache_dir: Path) -> dict:
    env = {**os.environ, "SEQREC_CACHE_DIR": str(cache_dir), "PREFECT_HOME": str(tmp / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    return env


def _run_args(cfg: Path, wd: Path, summary: Path) -> list[str]:
    return [SEQREC, "run", "--config", str(cfg), "--workdir", str(wd), "--until", "evaluate",
            "--summary-json", str(summary)]


def _checkpoint_epoch(wd: Path) -> int:
    import torch

    for f in (wd / "checkpoints").glob("*/last.pt"):
        try:
            return int(torch.load(f, weights_only=True)["epoch"]) + 1
        except Exception:  # noqa: BLE001 - replaced between glob and load
            return 0
    return 0


def test_sigkill_during_training_resumes_to_the_same_metrics(tmp_path, cache_dir):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    env = _env(tmp_path, cache_dir)
    ref = subprocess.run(_run_args(cfg, tmp_path / "ref", tmp_path / "ref.json"), capture_output=True, text=True,
                         timeout=600, env=env)
    assert ref.returncode == 0, ref.stderr[-3000:]

    wd = tmp_path / "wd"
    victim = subprocess.Popen(_run_args(cfg, wd, tmp_path / "victim.json"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 600
    while _checkpoint_epoch(wd) < 3:
        assert victim.poll() is None, "the run ended before it could be killed mid-training"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(victim.pid, signal.SIGKILL)  # the flow process, its ephemeral Prefect server, everything
    victim.wait(timeout=60)
    killed_at = _checkpoint_epoch(wd)
    assert 3 <= killed_at < CFG["train"]["epochs"]
    assert not (tmp_path / "victim.json").exists()

    again = subprocess.run(_run_args(cfg, wd, tmp_path / "again.json"), capture_output=True, text=True, timeout=600,
                           env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint" in again.stdout + again.stderr
    a, r = json.loads((tmp_path / "again.json").read_text()), json.loads((tmp_path / "ref.json").read_text())
    assert a["training"]["resumed"] is True and r["training"]["resumed"] is False
    assert a["data_version"] == r["data_version"]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in r["history"]]
    assert a["metrics"]["test"] == r["metrics"]["test"] and a["metrics"]["validation"] == r["metrics"]["validation"]
    assert not list((wd / "checkpoints").glob("*/last.pt")), "the finished job left its checkpoint behind"
