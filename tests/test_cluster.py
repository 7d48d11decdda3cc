"""Preprocessing against an existing Dask scheduler: a `dask scheduler` and two `dask worker`
processes on 127.0.0.1, started here, give the same data version and sequences as a local run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import free_port, run_cfg

DASK = str(Path(sys.executable).with_name("dask"))



@pytest.fixture()
def scheduler(tmp_path):
    from prefect.settings import PREFECT_API_URL

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if PREFECT_API_URL.value():  # workers report stage tasks to the same API as the flow
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    address = f"tcp://127.0.0.1:{port}"
    for i in range(2):
        procs.append(subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                                       "--local-directory", str(tmp_path / f"w{i}"), "--memory-limit", "2GB"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    try:
        from distributed import Client

        with Client(address, timeout="60s") as c:
            c.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_existing_scheduler_gives_the_same_data_version(tmp_path, synth_dir, prefect_harness, scheduler):
    from flows.training import training_flow

    schema = {"user_categorical": ["gender", "country"], "user_numeric": ["age"], "item_categorical": ["brand"],
              "item_multi": ["genres"], "item_numeric": ["price", "year"], "item_text": ["title"]}
    local = run_cfg(str(synth_dir / "events"), str(synth_dir / "users.parquet"), str(synth_dir / "items.parquet"),
                    data__schema=schema)
    remote = local.model_copy(update={"dask": local.dask.model_copy(update={"address": scheduler})})
    a = training_flow(config=local, workdir=str(tmp_path / "local"), until="features")
    b = training_flow(config=remote, workdir=str(tmp_path / "remote"), until="features")
    assert a["status"] == b["status"] == "completed" and b["task_runner"] == "dask"
    assert a["data_version"] == b["data_version"] and a["dataset"] == b["dataset"]
    sa = pd.read_parquet(Path(a["data_path"]) / "sequences.parquet").sort_values("user_id").reset_index(drop=True)
    sb = pd.read_parquet(Path(b["data_path"]) / "sequences.parquet").sort_values("user_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(sa, sb)
