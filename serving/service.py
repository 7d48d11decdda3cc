"""The service assembled: config -> event store, model follower, recommender, app; `run` serves it
with uvicorn (SIGHUP: check the aliases now)."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from serving.app import Metrics, create_app
from serving.config import ServeConfig
from serving.engine import Recommender
from serving.follower import ModelFollower, registry_follower
from serving.store import EventStore, SQLiteStore


@dataclass
class Service:
    app: FastAPI
    follower: ModelFollower
    store: EventStore
    recommender: Recommender
    metrics: Metrics


def open_store(store: str, path: Path) -> EventStore:
    """The configured store (serve.store): the embedded SQLite file, or Redis for several replicas."""
    if store == "sqlite":
        return SQLiteStore(path)
    from serving.redis_store import RedisStore

    return RedisStore(store)


def store_path(cfg: ServeConfig, workdir: Path) -> Path:
    return Path(cfg.store_path) if cfg.store_path else Path(workdir) / "serving" / "events.db"


def build(cfg: ServeConfig, tracking, workdir: Path) -> Service:
    """Everything but the HTTP server. The follower starts (first load in the background) with the app."""
    metrics = Metrics()
    follower = registry_follower(cfg, tracking, workdir, metrics.on_change)
    store = open_store(cfg.store, store_path(cfg, workdir))
    rec = Recommender(cfg, follower, store, tracking.model_name)

    def stop() -> None:
        follower.stop()
        store.close()

    return Service(create_app(rec, metrics, follower.start, stop), follower, store, rec, metrics)


def run(cfg: ServeConfig, tracking, workdir: Path) -> None:
    import uvicorn

    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    serve_log = logging.getLogger("seqrec.serve")
    serve_log.setLevel(logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    serve_log.addHandler(handler)
    serve_log.propagate = False
    svc = build(cfg, tracking, workdir)
    signal.signal(signal.SIGHUP, lambda *_: svc.follower.wake())
    uvicorn.run(svc.app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
