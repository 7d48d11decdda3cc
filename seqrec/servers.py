"""`seqrec server start|stop|status`: a local Prefect server and MLflow server as detached processes
(own session, pid files and logs under <workdir>/servers/), bound to 127.0.0.1 unless configured.

The Prefect server keeps its database in <workdir>/servers/prefect-home; the MLflow server serves
the work directory's own store (<workdir>/mlflow.db, artifacts in <workdir>/mlartifacts), so the
UI shows exactly the runs and versions that `seqrec run` records.

A pid file records the started process's start time and command line with its pid: `stop` signals
only that very process (a pid reused by another process, or a planted pid file, is reported stale
and removed, nothing is signalled) and `status` counts only it as running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from seqrec.errors import SeqrecError

NAMES = ("prefect", "mlflow")


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="bind address of both servers (0.0.0.0 exposes them)")
    prefect_port: int = Field(4200, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)
    start_timeout_s: float = Field(120, gt=0)
    training_cron: str = Field("0 3 * * *", description="schedule of the served training deployment")
    scoring_cron: str = Field("30 4 * * *", description="schedule of the served scoring deployment")
    timezone: str = "UTC"


def server_dir(workdir: Path) -> Path:
    return Path(workdir).resolve() / "servers"


def urls(cfg: ServerConfig) -> dict[str, str]:
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    return {"prefect": f"http://{host}:{cfg.prefect_port}/api", "mlflow": f"http://{host}:{cfg.mlflow_port}"}


def _health_url(name: str, u: dict[str, str]) -> str:
    return f"{u['prefect']}/health" if name == "prefect" else f"{u['mlflow']}/health"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _identity(pid: int) -> dict | None:
    """What identifies a live process beyond its pid (pids are reused): its start time and command
    line. None when it is gone (or a zombie)."""
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return {"pid": pid, "create_time": p.create_time(), "cmdline": p.cmdline()}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _record(d: Path, name: str, pid: int) -> None:
    """The pid file: the pid with the identity of the process started, checked before any signal."""
    ident = _identity(pid) or {"pid": pid, "create_time": None, "cmdline": None}
    (d / f"{name}.pid").write_text(json.dumps(ident))


def _pid(d: Path, name: str) -> int | None:
    """The pid of the server this work directory started, if that very process still runs."""
    return _verified(d, name)[0]


def _verified(d: Path, name: str) -> tuple[int | None, str]:
    """(pid, "") for our live server; (None, why) for no pid file, a dead pid, or a pid now used by
    another process (the pid file outlived its server, or was written by someone else)."""
    f = d / f"{name}.pid"
    if not f.is_file():
        return None, "no pid file"
    try:
        rec = json.loads(f.read_text())
        pid = int(rec["pid"])
    except (ValueError, TypeError, KeyError):
        return None, f"unreadable pid file {f} (a plain pid from an older seqrec cannot be verified)"
    now = _identity(pid)
    if now is None:
        return None, f"pid {pid} is not running"
    if rec.get("cmdline") != now["cmdline"] or rec.get("create_time") is None \
            or abs(float(rec["create_time"]) - now["create_time"]) > 0.5:
        return None, f"pid {pid} is another process now ({' '.join(now['cmdline'])[:120]!r})"
    return pid, ""


def _commands(cfg: ServerConfig, workdir: Path) -> dict[str, list[str]]:
    wd = Path(workdir).resolve()
    bin_dir = Path(sys.executable).parent
    return {
        "prefect": [str(bin_dir / "prefect"), "server", "start", "--host", cfg.host, "--port", str(cfg.prefect_port)],
        "mlflow": [str(bin_dir / "mlflow"), "server", "--host", cfg.host, "--port", str(cfg.mlflow_port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{wd / 'mlflow.db'}",
                   "--default-artifact-root", (wd / "mlartifacts").as_uri()],
    }


def status(cfg: ServerConfig, workdir: Path) -> dict:
    d = server_dir(workdir)
    saved = json.loads((d / "servers.json").read_text()) if (d / "servers.json").is_file() else {}
    u = saved.get("urls") or urls(cfg)
    procs = {n: {"pid": _pid(d, n), "healthy": _healthy(_health_url(n, u))} for n in NAMES}
    return {"prefect_api_url": u["prefect"], "mlflow_tracking_uri": u["mlflow"],
            "running": all(p["pid"] is not None and p["healthy"] for p in procs.values()), "processes": procs,
            "logs": {n: str(d / f"{n}.log") for n in NAMES}}


def start(cfg: ServerConfig, workdir: Path, log=print) -> dict:
    d = server_dir(workdir)
    d.mkdir(parents=True, exist_ok=True)
    (Path(workdir).resolve() / "mlartifacts").mkdir(parents=True, exist_ok=True)
    u = urls(cfg)
    env = {**os.environ, "PREFECT_HOME": str(d / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": u["prefect"], "DO_NOT_TRACK": "true"}
    env.pop("PREFECT_API_URL", None)  # the server must not try to talk to another server
    for name, cmd in _commands(cfg, workdir).items():
        if _pid(d, name) is not None:
            log(f"{name}: already running (pid {_pid(d, name)})")
            continue
        if _healthy(_health_url(name, u)):
            raise SeqrecError(f"{name}: something else already answers on {_health_url(name, u)}; "
                              f"choose another port (server.{name}_port)")
        pid = _spawn(d, name, cmd, env)
        log(f"{name}: started pid {pid}, log {d / f'{name}.log'}")
    (d / "servers.json").write_text(json.dumps({"urls": u, "config": cfg.model_dump()}, indent=2))
    deadline = time.monotonic() + cfg.start_timeout_s
    for name in NAMES:
        while not _healthy(_health_url(name, u)):
            if _pid(d, name) is None:
                raise SeqrecError(f"{name} server exited during start-up; see {d / f'{name}.log'}")
            if time.monotonic() > deadline:
                raise SeqrecError(f"{name} server not healthy after {cfg.start_timeout_s:.0f}s; see {d / f'{name}.log'}")
            time.sleep(0.5)
    return status(cfg, workdir)


def _spawn(d: Path, name: str, cmd: list[str], env: dict[str, str]) -> int:
    """Start `cmd` detached (its own session, so stop can signal its whole process group) and record it."""
    with open(d / f"{name}.log", "ab") as logf:
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                             cwd=d, start_new_session=True)
    _record(d, name, p.pid)  # Popen returns after the exec: the identity is the server's, not ours
    return p.pid


def stop(cfg: ServerConfig, workdir: Path, log=print, timeout_s: float = 30) -> dict:
    d = server_dir(workdir)
    for name in NAMES:
        pid, why = _verified(d, name)
        if pid is None:
            if (d / f"{name}.pid").is_file():  # never signal a pid we cannot prove is our server
                log(f"{name}: stale pid file removed, nothing signalled: {why}")
            (d / f"{name}.pid").unlink(missing_ok=True)
            continue
        os.killpg(pid, signal.SIGTERM)  # the whole session: uvicorn/gunicorn workers too
        deadline = time.monotonic() + timeout_s
        while _pid(d, name) is not None and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
        if _pid(d, name) is not None:
            os.killpg(pid, signal.SIGKILL)
            _reap(pid)
        (d / f"{name}.pid").unlink(missing_ok=True)
        log(f"{name}: stopped (pid {pid})")
    return status(cfg, workdir)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def api_url_for(cfg: ServerConfig, workdir: Path) -> str | None:
    """PREFECT_API_URL if set, else the URL of the server `seqrec server start` runs for this workdir."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    s = status(cfg, workdir)
    return s["prefect_api_url"] if s["processes"]["prefect"]["healthy"] else None
