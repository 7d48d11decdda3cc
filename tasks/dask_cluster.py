"""The Dask cluster that preprocessing (and later the task runner) uses: local by default,
an existing scheduler when `dask.address` is set."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class DaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, description="existing scheduler, e.g. tcp://127.0.0.1:8786")
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    processes: bool = Field(True, description="worker processes (true parallelism for pandas work)")
    memory_limit: str = Field("4GB", description="per worker; above it workers spill to disk")
    local_directory: str | None = Field(None, description="spill directory; default <workdir>/dask-scratch")


@contextlib.contextmanager
def dask_client(cfg: DaskConfig, workdir: Path) -> Iterator["distributed.Client"]:  # noqa: F821
    import dask
    from distributed import Client, LocalCluster

    if cfg.address:
        with Client(cfg.address, timeout="30s") as client:
            yield client
        return
    scratch = Path(cfg.local_directory or Path(workdir) / "dask-scratch")
    scratch.mkdir(parents=True, exist_ok=True)
    # one BLAS/OMP thread per worker: oversubscribing 2 cores slows everything (STACK_NOTES)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    with dask.config.set({"temporary-directory": str(scratch), "distributed.worker.daemon": False,
                          "distributed.admin.system-monitor.gil.enabled": False}):
        # worker processes talk over TCP on loopback only; threads use the in-process transport
        net = {"host": "127.0.0.1"} if cfg.processes else {}
        with LocalCluster(n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                          processes=cfg.processes, memory_limit=cfg.memory_limit, dashboard_address=None,
                          local_directory=str(scratch), silence_logs=logging.WARNING, **net) as cluster, Client(cluster) as client:
            yield client
