"""Faults injected for real (the injection code is benchmarks/faults.py): a `seqrec run` killed with
SIGKILL mid-training is resumed by the next run, which ends with exactly the metrics and A/B decision
of an uninterrupted run with the same seed (CPU). Marked slow (`make test-all`): runs killed inside
preprocessing, feature extraction and compare/promote; two runs at once on one work directory; a
tracking server killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.faults import SEQREC, TRAIN_CFG, checkpoint_epoch as _checkpoint_epoch, seqrec_env as _env
from tests.conftest import free_port

CFG = TRAIN_CFG


def test_sigkill_during_training_resumes_to_the_same_metrics_and_decision(tmp_path, cache_dir):
    """Also the determinism promise: the resumed run and an uninterrupted one (another work directory,
    same seed) end with the same data version, loss history, metrics and A/B decision."""
    from benchmarks.faults import crash_in_training, full_run

    ref = full_run(TRAIN_CFG, tmp_path / "ref", cache_dir)
    assert ref["training"]["resumed"] is False
    r = crash_in_training(tmp_path / "crash", cache_dir, after_epoch=3, reference=ref)
    assert 3 <= r["killed_after_epoch"] < TRAIN_CFG["train"]["epochs"]
    assert r["rerun_rc"] == 0, r["rerun_output"]
    assert r["resumed"], "the rerun did not say 'resuming from checkpoint'"
    assert r["same_version"] and r["same_losses"] and r["same_metrics"] and r["same_decision"], r
    assert not r["checkpoint_left"], "the finished job left its checkpoint behind"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["preprocess", "features"])
def test_sigkill_during_preprocessing_or_features_leaves_no_partial_version(stage, tmp_path, cache_dir):
    """Killed while a data version (staging + processed validation) or a views directory is being
    written: no reader ever sees a partial one, and the rerun produces the same data version hash,
    the same sequences and the same views."""
    from benchmarks.faults import crash_in_data_stage, reference_run

    ref = reference_run(tmp_path / "ref", cache_dir)
    r = crash_in_data_stage(stage, tmp_path / "crash", cache_dir, delay_s=0.2, reference=ref)
    assert not r["partial_visible"], r["visible_after_kill"]
    if stage == "preprocess":
        assert r["visible_after_kill"]["versions"] == {} or all(r["visible_after_kill"]["versions"].values())
    else:
        assert list(r["visible_after_kill"]["versions"].values()) == [True]
    assert r["rerun_rc"] == 0, r["rerun_output"]
    assert r["same_version"] and r["same_sequences"] and r["same_views"], r
    assert r["leftovers_after_rerun"] == [], "the rerun did not clean the dead writer's staging"


@pytest.mark.slow
def test_two_concurrent_runs_never_promote_on_a_stale_champion(tmp_path, cache_dir):
    """Two `seqrec run`s start together on one work directory and registry (different seeds): both
    finish, the registry lock orders compare + promote, and every promotion was decided against the
    champion that it replaced."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**CFG, "train": {**CFG["train"], "epochs": 6, "progress": False},
                                   "ab": {"baseline": "pop", "latency_users": 20}}))
    env = _env(tmp_path, cache_dir)
    wd = tmp_path / "wd"
    procs = [subprocess.Popen([SEQREC, "run", "--config", str(cfg), "--workdir", str(wd), "--set", f"seed={seed}",
                               "--summary-json", str(tmp_path / f"s{seed}.json")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for seed in (0, 1)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    runs = [json.loads((tmp_path / f"s{seed}.json").read_text()) for seed in (0, 1)]
    assert len({r["data_version"] for r in runs}) == 1  # one data version, written once
    assert sorted(r["model"]["version"] for r in runs) == [1, 2]
    from tasks.registry import open_registry
    from tasks.tracking import TrackingConfig

    reg = open_registry(TrackingConfig(), wd)
    entries = reg.entries()
    by_version = {r["model"]["version"]: r for r in runs}
    for e in entries:
        # the champion it replaced is exactly the reference its A/B was decided against
        assert e["action"] == "promote" and e["previous"] == by_version[e["version"]]["ab"]["reference_version"]
    assert sorted(e["version"] for e in entries) == sorted(r["model"]["version"] for r in runs if r["promoted"])
    assert entries, "neither run beat the Pop baseline: the scenario did not exercise promotion"
    assert reg.champion() == entries[-1]["version"]


@pytest.mark.slow
def test_sigkill_between_register_and_promote_leaves_no_orphan_state(tmp_path, cache_dir):
    """Killed while it holds the registry lock (compare/promote), after registering its version: the
    next run completes, the alias and the promotion log agree, and the champion's A/B passed."""
    from benchmarks.faults import crash_in_promote

    r = crash_in_promote(tmp_path, cache_dir)
    assert r["after_kill"] == {"versions": [1], "champion": None}  # registered, not promoted
    assert r["rerun_rc"] == 0, r["rerun_output"]
    assert r["alias_matches_log"] and r["champion_passed"] and r["killed_version_undecided_never_champion"], r



def _mlflow_server(tmp: Path, port: int) -> subprocess.Popen:
    import urllib.request

    p = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port",
                          str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}"],
                         cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return p
        except OSError:
            assert p.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)


@pytest.mark.slow
def test_tracking_server_down_mid_flow_fails_clearly_and_registers_nothing(tmp_path, cache_dir):
    port = free_port()
    server = _mlflow_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    cfg = tmp_path / "cfg.yaml"
    wd = tmp_path / "wd"
    cfg.write_text(yaml.safe_dump({**CFG, "tracking": {"tracking_uri": uri, "http_retries": 1, "http_backoff": 1,
                                                       "registry_dir": str(wd / "registry")}}))
    env = _env(tmp_path, cache_dir)
    run = subprocess.Popen([SEQREC, "run", "--config", str(cfg), "--workdir", str(wd), "--summary-json",
                            str(tmp_path / "s.json")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=env)
    try:
        deadline = time.monotonic() + 600
        while _checkpoint_epoch(wd) < 1:  # training has started: the server goes away now
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=60)
    out = run.communicate(timeout=900)[0]
    assert run.returncode == 1, out[-3000:]
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["status"] == "failed" and s["failed_stage"] == "register"
    assert f"MLflow tracking server {uri} unreachable after 1 retries" in s["error"]
    assert "nothing was registered" in s["error"] and "model" not in s
    server = _mlflow_server(tmp_path, port)  # back up: the registry must hold nothing
    try:
        from mlflow import MlflowClient

        c = MlflowClient(tracking_uri=uri, registry_uri=uri)
        assert c.search_registered_models() == []
        assert not (wd / "registry" / "promotions.jsonl").exists()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=60)


HOLD_LOCK = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("ROLLBACK")
"""


@pytest.mark.slow
def test_sqlite_store_locked_longer_than_mlflows_timeout_waits_instead_of_failing(tmp_path):
    """Another process holds the SQLite store exclusively for 26 s (MLflow's own busy timeout is
    20 s): a plain MlflowClient call fails with "database is locked", seqrec's client waits and
    succeeds once the lock is gone; with a short budget it fails with the lock error."""
    import threading

    from mlflow import MlflowClient

    from tasks.tracking import TrackingConfig, client_for

    cfg = TrackingConfig(sqlite_wait_s=120)
    client = client_for(cfg, tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "mlflow.db"), "26"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    plain: dict = {}

    def plain_call():
        try:
            MlflowClient(tracking_uri=uri, registry_uri=uri).create_registered_model("plain")
        except Exception as e:  # noqa: BLE001
            plain["error"] = str(e)
    t = threading.Thread(target=plain_call)
    t.start()
    t0 = time.monotonic()
    client.create_registered_model("patient")
    waited = time.monotonic() - t0
    t.join()
    holder.wait(timeout=60)
    assert "database is locked" in plain.get("error", ""), plain
    assert waited > 20 and client.get_registered_model("patient").name == "patient"

    impatient = client_for(TrackingConfig(sqlite_wait_s=0), tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "mlflow.db"), "23"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(Exception, match="database is locked"):
        impatient.create_registered_model("never")
    holder.wait(timeout=60)
    assert [m.name for m in client.search_registered_models()] == ["patient"]
