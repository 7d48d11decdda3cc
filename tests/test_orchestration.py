"""Orchestration: cached pure stages, Prefect artifacts, servers, and a served deployment triggered
through the API with an edited parameter (as the UI does), against a real local Prefect server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port

SEQREC = str(Path(sys.executable).with_name("seqrec"))
SMALL = {"data": {"source": "synthetic", "synthetic": {"users": 300, "items": 80, "events": 12_000, "seed": 7}},
         "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2},
         "model": {"dim": 32, "max_len": 20}, "train": {"batch_size": 64, "threads": 1, "progress": False, "epochs": 3},
         "ab": {"baseline": "pop", "latency_users": 10}}


async def _task_states(flow_run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as c:
        runs = await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {t.name.rsplit("-", 1)[0]: t.state.name for t in runs}


def test_unchanged_rerun_hits_the_cache_and_refresh_recomputes(tmp_path, prefect_harness, cache_dir):
    from flows.config import validate_config
    from flows.training import training_flow

    cfg = validate_config(SMALL)
    wd = str(tmp_path / "wd")
    runs = [training_flow(config=cfg, workdir=wd, until="features", refresh=r) for r in (False, False, True)]
    states = [asyncio.run(_task_states(s["prefect"]["flow_run_id"])) for s in runs]
    assert states[0]["preprocess"] == "Completed" and states[0]["features"] == "Completed"
    assert {"item_view", "user_view", "sequence_view"} <= states[0].keys()
    assert states[1]["preprocess"] == "Cached" and states[1]["features"] == "Cached"
    assert "item_view" not in states[1]  # the view stages are skipped entirely
    assert states[2]["preprocess"] == "Completed" and states[2]["features"] == "Completed"
    assert len({s["data_version"] for s in runs}) == 1 and len({s["views_path"] for s in runs}) == 1
    # a deleted data version is never served from the cache
    import shutil

    shutil.rmtree(runs[0]["data_path"])
    again = training_flow(config=cfg, workdir=wd, until="features")
    assert asyncio.run(_task_states(again["prefect"]["flow_run_id"]))["preprocess"] == "Completed"
    assert Path(again["data_path"]).is_dir() and again["data_version"] == runs[0]["data_version"]



@pytest.fixture()
def servers(tmp_path, cache_dir):
    wd = tmp_path / "wd"
    sets = ["--set", f"server.prefect_port={free_port()}", "--set", f"server.mlflow_port={free_port()}"]
    env = {**os.environ, "SEQREC_CACHE_DIR": str(cache_dir)}
    env.pop("PREFECT_API_URL", None)
    started = subprocess.run([SEQREC, "server", "start", "--workdir", str(wd), *sets], capture_output=True, text=True,
                             timeout=300, env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield wd, sets, env
    finally:
        subprocess.run([SEQREC, "server", "stop", "--workdir", str(wd), *sets], capture_output=True, timeout=120)


def test_served_deployment_runs_with_an_edited_parameter(servers, tmp_path):
    wd, sets, env = servers
    st = json.loads(subprocess.run([SEQREC, "server", "status", "--workdir", str(wd), "--json"], capture_output=True,
                                   text=True, timeout=120, env=env).stdout)
    assert st["running"] is True and st["prefect_api_url"].startswith("http://127.0.0.1:")
    assert st["mlflow_tracking_uri"].startswith("http://127.0.0.1:")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    serve = subprocess.Popen([SEQREC, "serve", "--workdir", str(wd), "--config", str(cfg), *sets],
                             stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
    try:
        code = f"""
import asyncio, json, os, time
os.environ["PREFECT_API_URL"] = {st["prefect_api_url"]!r}
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

async def deployment():
    async with get_client() as c:
        for _ in range(240):
            try:
                return await c.read_deployment_by_name("seqrec-training/seqrec-training")
            except Exception:
                await asyncio.sleep(0.5)
d = asyncio.run(deployment())
params = d.parameters
params["config"]["train"]["epochs"] = 1   # edited, as in the UI's "custom run"
fr = run_deployment("seqrec-training/seqrec-training", parameters=params, timeout=600)
print(json.dumps({{"state": fr.state.name, "id": str(fr.id), "cron": [s.schedule.cron for s in d.schedules]}}))
"""
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
        assert res.returncode == 0, res.stderr[-3000:] + (tmp_path / "serve.log").read_text()[-3000:]
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out["state"] == "Completed", (tmp_path / "serve.log").read_text()[-4000:]
        assert out["cron"] == ["0 3 * * *"]
        summaries = [json.loads(p.read_text()) for p in (wd / "runs").glob("*/summary.json")]
        mine = [s for s in summaries if s["prefect"]["flow_run_id"] == out["id"]]
        assert len(mine) == 1 and mine[0]["status"] == "completed"
        assert mine[0]["prefect"]["api_url"] == st["prefect_api_url"]
        assert mine[0]["training"]["epochs_run"] == 1 and len(mine[0]["history"]) == 1  # the edited value was used
        assert mine[0]["model"]["version"] == 1
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=60)


def test_infra_prefect_yaml_points_at_the_flows():
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    names = {d["name"]: d for d in spec["deployments"]}
    assert set(names) == {"seqrec-training", "seqrec-scoring"}
    for d in names.values():
        path, func = d["entrypoint"].split(":")
        assert f"def {func}(" in (REPO / path).read_text()
        assert d["schedules"][0]["cron"] and d["work_pool"]["name"]
    assert names["seqrec-training"]["concurrency_limit"] == 1


def test_stage_tasks_run_on_dask_worker_processes(tmp_path, prefect_harness, cache_dir):
    """The default task runner: stage tasks execute in the cluster's worker processes and report to
    the flow's API (no ephemeral server per worker), with the preprocessing futures on the same cluster."""
    from flows.config import validate_config
    from flows.training import training_flow

    cfg = validate_config({**SMALL, "dask": {"processes": True, "n_workers": 2, "task_runner": "dask"}})
    out = training_flow(config=cfg, workdir=str(tmp_path / "wd"), until="features")
    assert out["status"] == "completed" and out["task_runner"] == "dask"
    states = asyncio.run(_task_states(out["prefect"]["flow_run_id"]))
    # recorded in the flow's API: a worker with its own ephemeral server would report elsewhere
    for name in ("validate_raw", "preprocess", "validate_processed", "item_view", "user_view", "sequence_view",
                 "features"):
        assert states[name] == "Completed", states
