"""Run a command and measure its whole process tree: wall time and peak summed RSS (sampled every 50 ms)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def run_tree(cmd: list[str], env: dict[str, str]) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak summed RSS in GiB of the process and its children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:6]} failed ({proc.returncode}): {err[-3000:]}")
    return out, time.perf_counter() - t0, peak / 2**30
