"""The Dask cluster that preprocessing (and later the task runner) uses: local by default,
an existing scheduler when `dask.address` is set."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, description="existing scheduler, e.g. tcp://127.0.0.1:8786")
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    processes: bool = Field(True, description="worker processes (true parallelism for pandas work)")
    memory_limit: str = Field("4GB", description="per worker; above it workers spill to disk")
    local_directory: str | None = Field(None, description="spill directory; default <workdir>/dask-scratch")
    task_runner: Literal["dask", "threads"] = Field("dask", description="where the flow's stage tasks run: "
                                                    "Prefect's DaskTaskRunner on this cluster, or the flow's threads")
    # a scheduler runs what the client sends and the client unpickles what comes back: `address` may
    # only name these (checked by flows.config.check_paths before a run starts)
    allowed_schemes: list[str] = Field(["tcp", "tls"], description="schemes `address` may use (not inproc/ucx/ws)")
    allowed_hosts: list[str] = Field(["127.0.0.1", "localhost", "dask-scheduler", "seqrec-dask-scheduler.seqrec.svc"],
                                     description="hosts `address` may name: loopback and the schedulers of infra/ "
                                                 "(docker-compose, k8s)")


@contextlib.contextmanager
def dask_client(cfg: DaskConfig, workdir: Path, worker_env: dict[str, str] | None = None
                ) -> Iterator["distributed.Client"]:  # noqa: F821
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
                          "distributed.admin.system-monitor.gil.enabled": False,
                          # the statistical profiler samples busy threads every 10 ms under the GIL:
                          # it made stage tasks on workers (training) up to 1.6x slower
                          "distributed.worker.profile.enabled": False}):
        # worker processes talk over TCP on loopback only; threads use the in-process transport
        net = {"host": "127.0.0.1"} if cfg.processes else {}
        if cfg.processes:  # worker processes: their own thread caps and environment
            threads = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
            net["env"] = {**threads, **(worker_env or {})}
        with LocalCluster(n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                          processes=cfg.processes, memory_limit=cfg.memory_limit, dashboard_address=None,
                          local_directory=str(scratch), silence_logs=logging.WARNING, **net) as cluster, \
                Client(cluster) as client:
            yield client


@contextlib.contextmanager
def stage_client() -> Iterator["distributed.Client"]:  # noqa: F821
    """The client a stage task uses for its own futures. On a Dask worker (the DaskTaskRunner) it is a
    worker client: the task's thread secedes while it waits, so its sub-tasks can use that worker
    too. Elsewhere (`dask.task_runner=threads`) it is the flow's client."""
    from distributed import get_client, get_worker, worker_client

    try:
        get_worker()
    except ValueError:
        yield get_client()
        return
    with worker_client() as client:
        yield client
