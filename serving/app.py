"""The online service (`seqrec serve-model`): FastAPI over the Recommender.

Endpoints: POST /recommend, POST /recommend/batch, POST /events, POST /invocations (MLflow's scoring
protocol: existing clients of `mlflow models serve` keep working), GET /health, GET /ready,
GET /metrics (Prometheus).

Scoring runs on one worker thread, fed by a queue: requests that arrive while a batch is being
scored are scored together in the next one (one forward pass), so under concurrency throughput
grows with the batch instead of queueing single forwards, and an idle service adds no wait. A
client error is a 4xx that names the field and the rule, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from seqrec.errors import SeqrecError
from serving.engine import (Answer, BatchRequest, EventsRequest, NotReady, RecommendRequest, Recommender,
                            RequestError)

log = logging.getLogger("seqrec.serve")


class Metrics:
    """Prometheus metrics of one service (its own registry: tests build several apps)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("seqrec_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("seqrec_request_seconds", "request latency", ["endpoint"], registry=r,
                                 buckets=(.001, .0025, .005, .0075, .01, .015, .025, .05, .1, .25, .5, 1, 2.5))
        self.batch = Histogram("seqrec_scoring_batch_requests", "requests scored in one forward pass", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.version = Gauge("seqrec_model_version", "registered version answering for the alias", ["alias"], registry=r)
        self.reloads = Counter("seqrec_model_reloads", "alias changes picked up", ["alias", "result"], registry=r)
        self.events = Counter("seqrec_events_received", "events posted", registry=r)

    def on_change(self, alias: str, loaded, result: str) -> None:
        self.reloads.labels(alias, result).inc()
        if loaded is not None:
            self.version.labels(alias).set(loaded.version)
        elif result == "removed":
            self.version.labels(alias).set(0)


class Batcher:
    """Scores queued requests together on one worker thread (see the module doc)."""

    def __init__(self, fn: Callable[[list], list], metrics: Metrics) -> None:
        self.fn = fn
        self.metrics = metrics
        self.pending: list[tuple[list, asyncio.Future]] = []
        self.running = False
        self._task: asyncio.Task | None = None

    async def submit(self, requests: list) -> list:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((requests, fut))
        if not self.running:
            self.running = True
            self._task = asyncio.create_task(self._drain())  # a reference: the loop keeps only weak ones
        return await fut

    async def _drain(self) -> None:
        import anyio

        try:
            while self.pending:
                batch, self.pending = self.pending, []
                flat = [r for reqs, _ in batch for r in reqs]
                self.metrics.batch.observe(len(flat))
                try:
                    answers = await anyio.to_thread.run_sync(self.fn, flat)
                except Exception as e:
                    if len(batch) == 1:
                        batch[0][1].set_exception(e)
                        continue
                    # one submission's error must not fail the others: score them one by one
                    for reqs, fut in batch:
                        try:
                            fut.set_result(await anyio.to_thread.run_sync(self.fn, reqs))
                        except Exception as e:
                            fut.set_exception(e)
                    continue
                pos = 0
                for reqs, fut in batch:
                    fut.set_result(answers[pos:pos + len(reqs)])
                    pos += len(reqs)
        finally:
            self.running = False


def create_app(recommender: Recommender, metrics: Metrics, on_start: Callable[[], None] = lambda: None,
               on_stop: Callable[[], None] = lambda: None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        on_start()
        yield
        on_stop()

    app = FastAPI(title="seqrec", summary="next-item recommendations from the registered champion",
                  lifespan=lifespan)
    batcher = Batcher(recommender.answer, metrics)
    follower = recommender.follower
    cfg = recommender.cfg

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t)
        return response

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(int(cfg.poll_s))})

    @app.post("/recommend", response_model=Answer)
    async def recommend(req: RecommendRequest) -> Any:
        recommender.check(req)
        return (await batcher.submit([req]))[0]

    @app.post("/recommend/batch")
    async def recommend_batch(req: BatchRequest) -> dict:
        if len(req.requests) > cfg.max_batch:
            raise RequestError(f"requests: {len(req.requests)} given, at most serve.max_batch={cfg.max_batch}")
        for r in req.requests:
            recommender.check(r)
        return {"answers": await batcher.submit(req.requests)}

    @app.post("/events")
    async def events(req: EventsRequest) -> dict:
        import anyio

        n = await anyio.to_thread.run_sync(recommender.add_events, req)
        metrics.events.inc(len(req.events))
        return {"user_id": req.user_id, "stored": len(req.events), "user_events": n}

    @app.post("/invocations")
    async def invocations(request: Request) -> dict:
        """MLflow's scoring protocol: {"dataframe_split": ...} or {"dataframe_records": [...]} with the
        pyfunc's input columns (user_id, history, k, ...); answers {"predictions": [...]} as
        `mlflow models serve` does, from the same loaded champion."""
        import anyio

        frame = await _mlflow_frame(request)
        model = follower.get(cfg.alias)
        if model is None:
            raise NotReady(f"no model loaded for @{cfg.alias} yet")
        try:
            out = await anyio.to_thread.run_sync(lambda: model.scorer.recommend(frame, k=10))
        except (SeqrecError, ValueError) as e:  # the pyfunc's input rules and pandas' conversions
            raise RequestError(f"invocations: {e}") from None
        return {"predictions": out.to_dict(orient="records")}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": {a: m.version for a, m in follower.current.items()}}

    @app.get("/ready")
    async def ready() -> Response:
        m = follower.get(cfg.alias)
        body = {"ready": m is not None, "alias": cfg.alias, "version": m.version if m else None,
                "loaded_at": m.loaded_at if m else None, "last_check": follower.last_check,
                "last_error": follower.last_error}
        return JSONResponse(body, status_code=200 if m is not None else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _mlflow_frame(request: Request):
    import json

    import pandas as pd

    try:
        body = json.loads(await request.body())
    except ValueError as e:
        raise RequestError(f"invocations: the body is not JSON ({e})") from None
    if not isinstance(body, dict) or not ({"dataframe_split", "dataframe_records"} & body.keys()):
        raise RequestError("invocations: expected {\"dataframe_split\": {...}} or {\"dataframe_records\": [...]}")
    try:
        if "dataframe_split" in body:
            split = body["dataframe_split"]
            return pd.DataFrame(split.get("data", []), columns=split.get("columns"))
        return pd.DataFrame.from_records(body["dataframe_records"])
    except (TypeError, ValueError, AttributeError) as e:
        raise RequestError(f"invocations: not a data frame ({e})") from None
