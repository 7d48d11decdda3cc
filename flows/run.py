"""A flow run's bookkeeping, written once for every stage: timing, the run summary (rewritten
atomically after each stage, so a failure still leaves a complete record of what ran, what failed
and why), `--until`, where a stage's task runs, and Prefect artifacts that never fail a run.

A stage's result adds itself to the summary (`summary()`) and to the log (`describe()`), see
tasks/stages.py.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from prefect import get_run_logger

from flows.artifacts import summary_artifact
from flows.config import PipelineConfig, check_paths
from seqrec.errors import ConfigError, SeqrecError
from seqrec.paths import check_name
from seqrec.fsutil import write_json_atomic

STAGES = ["ingest", "validate_raw", "preprocess", "validate_processed", "features", "drift", "select", "train",
          "evaluate", "register", "compare", "promote"]
# a data version becomes visible only after the processed gate passed: --until preprocess includes it
LAST_STAGE_OF = {"preprocess": "validate_processed"}


class UntilReached(Exception):
    """The stage named by `--until` is done: the run ends there, completed."""


class Runner:
    """Where stage tasks run: Prefect's DaskTaskRunner on the pipeline's Dask cluster (`dask.task_runner
    = dask`, the default), or the flow's own thread pool (None)."""

    def __init__(self, task_runner=None) -> None:
        self.task_runner = task_runner

    def submit(self, task_, **parameters):
        if self.task_runner is None:
            return task_.submit(**parameters)
        return self.task_runner.submit(task_, parameters=parameters)

    def __call__(self, task_, **parameters):
        return self.submit(task_, **parameters).result()


LOCAL = Runner(None)


def inline(fn, **parameters):
    """A stage that composes several tasks itself: called in the flow process."""
    return fn(**parameters)


class RunSummary:
    """<run_dir>/summary.json, written after every stage."""

    def __init__(self, run_dir: Path, run_id: str) -> None:
        self.path = run_dir / "summary.json"
        self.data: dict[str, Any] = {"status": "running", "failed_stage": None, "error": None, "run_id": run_id,
                                     "data_version": None, "dataset": None, "timings_s": {}, "stages": [],
                                     "run_dir": str(run_dir)}
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        except BaseException as e:
            self.data.update(status="failed", failed_stage=name,
                             error=str(e) if isinstance(e, SeqrecError) else f"{type(e).__name__}: {e}")
            if not isinstance(e, SeqrecError):
                self.data["traceback"] = traceback.format_exc()[-4000:]
            artifact(summary_artifact, self.data)
            raise
        finally:
            self.data["timings_s"][name] = round(time.perf_counter() - t, 3)
            self.data["stages"].append(name)
            self.save()


class PipelineRun:
    """One run of the training flow: its configuration (paths checked), work and run directories,
    summary, cached results' storage, and where it stops. Use as a context manager: the run ends
    completed at `until` or after the last stage, failed (and re-raised) at a stage that raised."""

    def __init__(self, config: PipelineConfig, workdir: str | Path, run_id: str | None, until: str | None,
                 refresh: bool) -> None:
        from prefect.runtime import flow_run

        from tasks.results import result_storage
        from tasks.tracking import registry_dir

        if until is not None and until not in STAGES:
            raise ConfigError(f"until={until!r}: must be one of {', '.join(STAGES)}")
        self.log = get_run_logger()
        self.workdir = Path(workdir).resolve()
        # before anything is written: a deployment's parameters skip the CLI's check
        self.config = check_paths(config, self.workdir)
        if until not in STAGES[:STAGES.index("register")]:
            # a remote store without a shared promotion log is refused now, not after training
            registry_dir(self.config.tracking, self.workdir)
        self.until = LAST_STAGE_OF.get(until or "", until)
        self.refresh = refresh
        # a parameter that names a directory: runs/<run_id> must not climb out of runs/
        self.run_id = check_name("run_id", run_id) if run_id else \
            time.strftime("%Y%m%dT%H%M%S") + "-" + str(flow_run.get_id() or "")[:6]
        self.dir = self.workdir / "runs" / self.run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.summary = RunSummary(self.dir, self.run_id)
        self.summary.data["prefect"] = {"flow_run_id": str(flow_run.get_id()), "api_url": _api_url()}
        self.summary.save()
        # cached results live with the work directory they describe; typed JSON only (tasks/stages.py)
        self.storage = result_storage(self.workdir)
        self.t0 = time.perf_counter()

    def __enter__(self) -> "PipelineRun":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None or kind is UntilReached:
            self.summary.data["status"] = "completed"
            self.summary.data["timings_s"]["total"] = round(time.perf_counter() - self.t0, 3)
            self.summary.save()
            artifact(summary_artifact, self.summary.data)
            return True
        return False

    @property
    def data(self) -> dict[str, Any]:
        return self.summary.data

    def stage(self, name: str, task_, *, on: Callable[..., Any] = LOCAL, then: Callable[[Any], Any] | None = None,
              stop: bool = True, **parameters):
        """Run one stage's task on `on` (the flow process by default): timed, its result recorded in
        the summary and the log; `then` adjusts the result before it is recorded. `stop=False`: the
        caller finishes the stage's work, then calls `stop_if_until`."""
        with self.summary.stage(name):
            result = on(task_, **parameters)
            if then is not None:
                result = then(result)
            self.record(result)
        if stop:
            self.stop_if_until(name)
        return result

    def stop_if_until(self, name: str) -> None:
        if self.until == name:
            raise UntilReached(name)

    def record(self, result: Any) -> None:
        if hasattr(result, "summary"):
            self.summary.data.update(result.summary())
        if hasattr(result, "describe"):
            self.log.info("%s", result.describe())
        self.summary.save()

    @contextlib.contextmanager
    def cluster(self) -> Iterator[Runner]:
        """The pipeline's Dask cluster for the data stages; yields where their tasks run."""
        from tasks.dask_cluster import dask_client

        cfg = self.config.dask
        # worker processes report task runs to this flow's API (the ephemeral one too), never their own
        with dask_client(cfg, self.workdir, worker_env={"PREFECT_API_URL": _client_api_url()}) as client, \
                _task_runner(cfg, client) as task_runner:
            self.log.info("dask: %s; stage tasks on %s", client.dashboard_link if cfg.address else
                          f"local cluster {client.scheduler.address}",
                          "the Dask cluster (DaskTaskRunner)" if task_runner else "the flow's thread pool")
            self.summary.data["task_runner"] = "dask" if task_runner else "threads"
            yield Runner(task_runner)


@contextlib.contextmanager
def _task_runner(cfg, client):
    if cfg.task_runner != "dask":
        yield None
        return
    from prefect_dask import DaskTaskRunner

    with DaskTaskRunner(address=client.scheduler.address) as runner:
        yield runner


def artifact(make, *args) -> None:
    """Artifacts are a view of the run, never a reason for it to fail."""
    try:
        make(*args)
    except Exception as e:  # noqa: BLE001
        get_run_logger().warning("could not create Prefect artifact %s: %s", make.__name__, e)


def _api_url() -> str | None:
    """The configured server (None when the run uses an ephemeral one)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _client_api_url() -> str:
    """The API this process talks to, including an ephemeral server's address."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        return str(c.api_url)
