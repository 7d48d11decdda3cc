"""The online service against a real registry (four real training runs, MLflow on SQLite): answers
equal the batch scores, posted events change the next answer, a promotion or rollback is served
without a restart and without a failed request, client errors are 4xx naming the rule, and the
online A/B replays with the offline gate's statistics."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SEQREC, copy_workdir
from tests.conftest import registry_of as _registry
from tests.conftest import seqrec_cli as _cli


@pytest.fixture(scope="module")
def workdir(registry_scenario, tmp_path_factory) -> Path:
    """A copy of the scenario's work directory (the registry tests keep theirs), champion = 3."""
    src, _ = registry_scenario
    wd = tmp_path_factory.mktemp("serving") / "wd"
    copy_workdir(src, wd, skip=("data",))
    _champion(wd, 3)
    return wd


def _champion(wd: Path, version: int) -> None:
    reg = _registry(wd)
    if reg.champion() != version:
        reg.promote_command(version, force=True)


def _service(wd: Path, **serve):
    from serving.config import ServeConfig
    from serving.service import build
    from tasks.tracking import TrackingConfig

    return build(ServeConfig(**{"poll_s": 0.2, **serve}), TrackingConfig(), wd)


def _client(svc):
    from fastapi.testclient import TestClient

    return TestClient(svc.app)


def _ready(c, version: int | None = None, timeout: float = 60) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        r = c.get("/ready")
        if r.status_code == 200 and (version is None or r.json()["version"] == version):
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"not ready (version {version}) after {timeout}s: {r.json()}")


def test_answers_equal_the_batch_scores(workdir, tmp_path):
    """For every user the model knows, /recommend/batch returns exactly `seqrec score`'s items and
    scores; single requests answer as the batch does."""
    scored = _cli(workdir, "score", "--version", "3", "--k", "5", "--out", str(tmp_path / "s.parquet"))
    assert scored.returncode == 0, scored.stderr[-2000:]
    batch = pd.read_parquet(tmp_path / "s.parquet")
    users = sorted(batch["user_id"].unique())
    svc = _service(workdir)
    with _client(svc) as c:
        assert _ready(c)["version"] == 3
        answers = []
        for lo in range(0, len(users), 200):
            r = c.post("/recommend/batch", json={"requests": [{"user_id": u, "k": 5} for u in users[lo:lo + 200]]})
            assert r.status_code == 200, r.text
            answers += r.json()["answers"]
        single = [c.post("/recommend", json={"user_id": u, "k": 5}).json() for u in users[:20]]
    online = pd.DataFrame([{"user_id": a["user_id"], "rank": i + 1, "item_id": it["item_id"], "score": it["score"]}
                           for a in answers for i, it in enumerate(a["items"])])
    assert {a["version"] for a in answers} == {3} and {a["source"] for a in answers} == {"user"}
    merged = batch.merge(online, on=["user_id", "rank"], suffixes=("_batch", "_online"), how="outer")
    assert len(merged) == len(batch) == len(online)
    assert (merged["item_id_batch"] == merged["item_id_online"]).all()
    np.testing.assert_allclose(merged["score_batch"], merged["score_online"], rtol=1e-5, atol=1e-6)
    for s, a in zip(single, answers[:20]):
        assert [i["item_id"] for i in s["items"]] == [i["item_id"] for i in a["items"]]


def test_posted_events_change_the_next_answer(workdir):
    svc = _service(workdir, store_path=str(workdir / "serving" / "events-test.db"))
    with _client(svc) as c:
        _ready(c)
        scorer = svc.follower.get("champion").scorer
        user = str(scorer.hist_index[0])
        before = c.post("/recommend", json={"user_id": user, "k": 10}).json()
        top = before["items"][0]["item_id"]
        r = c.post("/events", json={"user_id": user, "events": [{"item_id": top, "event_type": "view"}]})
        assert r.status_code == 200 and r.json()["user_events"] == 1
        after = c.post("/recommend", json={"user_id": user, "k": 10}).json()
        assert after["source"] == "user" and [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
        unseen = c.post("/recommend", json={"user_id": user, "k": 10, "exclude_seen": True}).json()
        assert top not in [i["item_id"] for i in unseen["items"]]  # the posted event is part of what was seen
        # a user the model never saw: answered from the posted events, exactly as from that history
        items = [str(scorer.item_ids[j]) for j in (2, 3, 4)]
        stamps = [1_700_000_000, 1_700_000_100, 1_700_086_400]
        c.post("/events", json={"user_id": "new-user", "events": [{"item_id": i, "timestamp": t}
                                                                  for i, t in zip(items, stamps)]})
        from_events = c.post("/recommend", json={"user_id": "new-user", "k": 10}).json()
        from_history = c.post("/recommend", json={"history": items, "timestamps": stamps, "k": 10}).json()
        cold = c.post("/recommend", json={"user_id": "nobody", "k": 10}).json()
    assert from_events["source"] == "events" and from_history["source"] == "history"
    assert [i["item_id"] for i in from_events["items"]] == [i["item_id"] for i in from_history["items"]]
    assert cold["source"] == "popular" and len(cold["items"]) == 10


def test_filters_exclusions_and_item_attributes(workdir):
    svc = _service(workdir)
    with _client(svc) as c:
        _ready(c)
        scorer = svc.follower.get("champion").scorer
        user = str(scorer.hist_index[1])
        plain = c.post("/recommend", json={"user_id": user, "k": 10}).json()
        assert all({"brand", "genres"} <= set(i["attributes"]) for i in plain["items"])
        brand = plain["items"][0]["attributes"]["brand"]
        only = c.post("/recommend", json={"user_id": user, "k": 10, "filters": {"brand": [brand]}}).json()
        assert only["items"] and all(i["attributes"]["brand"] == brand for i in only["items"])
        genre = plain["items"][0]["attributes"]["genres"].split("|")[0]
        by_genre = c.post("/recommend", json={"user_id": user, "k": 10, "filters": {"genres": [genre]}}).json()
        assert by_genre["items"] and all(genre in i["attributes"]["genres"].split("|") for i in by_genre["items"])
        drop = [i["item_id"] for i in plain["items"][:3]]
        excluded = c.post("/recommend", json={"user_id": user, "k": 10, "exclude_items": drop}).json()
        assert not set(drop) & {i["item_id"] for i in excluded["items"]}
        assert [i["item_id"] for i in excluded["items"][:7]] == [i["item_id"] for i in plain["items"][3:]]
        popular = c.post("/recommend", json={"user_id": "nobody", "k": 5, "filters": {"brand": [brand]}}).json()
        assert popular["source"] == "popular" and all(i["attributes"]["brand"] == brand for i in popular["items"])


BAD = [
    ("/recommend", {"user_id": "u", "k": 0}, 422, "greater than or equal to 1"),
    ("/recommend", {"user_id": "u", "k": 101}, 400, "serve.max_k=100"),
    ("/recommend", {"user_id": "u", "colour": "red"}, 422, "Extra inputs"),
    ("/recommend", {"history": ["a", "b"], "timestamps": [1]}, 422, "one entry per history item"),
    ("/recommend", {"history": ["a", "b"], "timestamps": [5, 1]}, 422, "ascending"),
    ("/recommend", {"user_id": "u", "filters": {"colour": ["red"]}}, 400, "unknown item attribute 'colour'"),
    ("/recommend", {"user_id": 5}, 422, "valid string"),
    ("/recommend", {"user_id": ""}, 422, "at least 1 character"),
    ("/recommend", {"history": ["a"] * 2001}, 400, "serve.max_history=2000"),
    ("/recommend/batch", {"requests": []}, 422, "at least 1 item"),
    ("/recommend/batch", {"requests": [{"user_id": "u"}] * 257}, 400, "serve.max_batch=256"),
    ("/events", {"user_id": "u", "events": []}, 422, "at least 1 item"),
    ("/events", {"user_id": "u", "events": [{"item_id": "a", "timestamp": -5}]}, 422, "greater than or equal to 0"),
    ("/events", {"events": [{"item_id": "a"}]}, 422, "Field required"),
    ("/invocations", {"instances": [1]}, 400, "dataframe_split"),
    ("/invocations", {"dataframe_records": [{"k": 3}]}, 400, "'user_id' or a 'history'"),
]


def test_client_errors_are_4xx_naming_the_rule(workdir):
    svc = _service(workdir)
    with _client(svc) as c:
        _ready(c)
        for path, body, status, words in BAD:
            r = c.post(path, json=body)
            assert r.status_code == status and words in r.text, (path, body, r.status_code, r.text[:300])
        for path in ("/recommend", "/events", "/invocations"):
            r = c.post(path, content=b"{not json", headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (path, r.status_code)
        # a bad request batched with good ones fails alone
        ok = c.post("/recommend", json={"user_id": "nobody", "k": 3})
        assert ok.status_code == 200
        metrics = c.get("/metrics").text
    assert 'status="500"' not in metrics


def test_not_ready_until_a_model_is_loaded(workdir):
    svc = _service(workdir, alias="no-such-alias")
    with _client(svc) as c:
        time.sleep(0.5)
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["ready"] is False
        r = c.post("/recommend", json={"user_id": "u"})
        assert r.status_code == 503 and "no model loaded for @no-such-alias" in r.text


def test_a_promotion_and_a_rollback_are_served_without_a_failed_request(workdir):
    svc = _service(workdir)
    reg = _registry(workdir)
    statuses: list[int] = []
    versions: list[int] = []
    stop = threading.Event()
    with _client(svc) as c:
        _ready(c, 3)
        user = str(svc.follower.get("champion").scorer.hist_index[0])

        def hammer() -> None:
            while not stop.is_set():
                r = c.post("/recommend", json={"user_id": user, "k": 5})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["version"])

        t = threading.Thread(target=hammer)
        t.start()
        try:
            time.sleep(0.5)
            t0 = time.time()
            _champion(workdir, 1)
            _ready(c, 1, timeout=30)
            promoted_s = time.time() - t0
            time.sleep(0.3)
            reg.rollback()
            _ready(c, 3, timeout=30)
            time.sleep(0.3)
        finally:
            stop.set()
            t.join()
        metrics = c.get("/metrics").text
    assert statuses and set(statuses) == {200}, set(statuses)
    assert 1 in versions and versions[-1] == 3 and versions[0] == 3
    assert promoted_s < 30
    assert 'seqrec_model_reloads_total{alias="champion",result="loaded"} 3.0' in metrics
    assert 'seqrec_model_version{alias="champion"} 3.0' in metrics


def test_canary_and_shadow_replay_with_the_gate_statistics(workdir):
    """Half the users get the challenger; both models rank for everyone; each user's next event is
    the outcome; the replay compares the two lists per user with tasks.ab.paired_stats."""
    from serving.replay import online_report
    from tasks.ab import ABConfig

    reg = _registry(workdir)
    reg.client.set_registered_model_alias(reg.name, "challenger", "2")  # the crippled run
    svc = _service(workdir, canary_fraction=0.5, shadow=True, store_path=str(workdir / "serving" / "canary.db"))
    with _client(svc) as c:
        _ready(c, 3)
        while svc.follower.get("challenger") is None:
            time.sleep(0.1)
        scorer = svc.follower.get("champion").scorer
        users = [str(u) for u in scorer.hist_index[:250]]
        answers = c.post("/recommend/batch", json={"requests": [{"user_id": u} for u in users]}).json()["answers"]
        arms = {a["alias"] for a in answers}
        # the outcome: each user consumes the champion's second choice
        time.sleep(0.01)
        for u in users:
            imp = [i for i in svc.store.impressions() if i.user_id == u][-1]
            c.post("/events", json={"user_id": u, "events": [{"item_id": imp.lists["champion"]["items"][1]}]})
    assert arms == {"champion", "challenger"}
    served = {a["alias"]: sum(1 for b in answers if b["alias"] == a["alias"]) for a in answers}
    assert 0.35 < served["challenger"] / len(users) < 0.65
    from serving.store import SQLiteStore

    rep = online_report(SQLiteStore(workdir / "serving" / "canary.db"), ABConfig(min_users=100), 3600)
    (cmp,) = rep["comparisons"]
    assert cmp["champion_version"] == 3 and cmp["challenger_version"] == 2 and cmp["n_users"] == 250
    assert cmp["reference_mean"] == pytest.approx(1 / np.log2(3))  # rank 2 for every user
    assert cmp["lift"] < 0 and cmp["verdict"] == "no difference shown"
    cli = _cli(workdir, "serve-report", "--json", "--set", f"serve.store_path={workdir / 'serving' / 'canary.db'}")
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert '"challenger_version": 2' in cli.stdout


def test_the_store_contract(tmp_path):
    """Events come back per user in order, after the model's last event only, newest `limit`."""
    from serving.store import Impression, SQLiteStore

    stores = [SQLiteStore(tmp_path / "e.db")]
    redis = _redis_server(tmp_path)
    if redis is not None:
        from serving.redis_store import RedisStore

        stores.append(RedisStore(redis[1]))
    try:
        for s in stores:
            assert s.append("u", [("a", None, 10), ("b", "buy", 20), ("c", None, 30)]) == 3
            s.append("v", [("x", None, None)])
            assert [e.item_id for e in s.events("u", None, 10)] == ["a", "b", "c"]
            assert [e.item_id for e in s.events("u", 15, 10)] == ["b", "c"]
            assert [e.item_id for e in s.events("u", None, 2)] == ["b", "c"]
            assert s.events("u", None, 10)[1].event_type == "buy" and s.count() == 4
            assert s.events("v", None, 5)[0].ts >= int(time.time()) - 5  # no timestamp: arrival time
            s.log_impressions([Impression("r1", 1.0, "u", "champion", 3, {"champion": {"version": 3, "items": ["a"]}})])
            assert s.impressions()[0].lists["champion"]["items"] == ["a"]
            assert set(s.all_events()) == {"u", "v"}
    finally:
        for s in stores:
            s.close()
        if redis is not None:
            redis[0].terminate()
            redis[0].wait(10)


def _redis_server(tmp_path: Path):
    """A real redis-server on a free port when the machine has one (CI: SQLite only)."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    for _ in range(100):
        try:
            redis.Redis(port=port).ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.terminate()
    raise AssertionError("redis-server did not start")


def test_the_command_serves_and_stops(workdir):
    """`seqrec serve-model` as users run it: ready, answers, SIGHUP checks the alias, SIGTERM stops."""
    import httpx

    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(workdir.parent / "prefect-home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([SEQREC, "serve-model", "--workdir", str(workdir), "--port", str(port), "--poll-s", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=workdir.parent)
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.time() + 120
        while time.time() < end:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        r = httpx.post(f"{url}/recommend", json={"user_id": "nobody", "k": 3}, timeout=10)
        assert r.status_code == 200 and r.json()["version"] == 3
        _champion(workdir, 4)
        proc.send_signal(signal.SIGHUP)  # poll_s is 600: only the signal can make it look
        end = time.time() + 60
        while time.time() < end and httpx.get(f"{url}/ready", timeout=2).json()["version"] != 4:
            time.sleep(0.2)
        assert httpx.get(f"{url}/ready", timeout=2).json()["version"] == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        _champion(workdir, 3)
    assert proc.returncode in (0, -signal.SIGTERM), out[-2000:]  # uvicorn re-raises the signal after a clean shutdown
    assert "now version 4" in out


def test_invocations_answer_as_the_mlflow_pyfunc(workdir):
    """POST /invocations (MLflow's scoring protocol) returns what the registered pyfunc predicts."""
    import mlflow

    from tasks.tracking import tracking_uri, TrackingConfig

    mlflow.set_tracking_uri(tracking_uri(TrackingConfig(), workdir))
    model = mlflow.pyfunc.load_model("models:/seqrec/3")
    scorer = model.unwrap_python_model().scorer
    users = [str(u) for u in scorer.hist_index[:5]]
    frame = pd.DataFrame({"user_id": [*users, None], "history": [None] * 5 + [[str(scorer.item_ids[2])]],
                          "k": [3] * 6})
    expected = model.predict(frame)
    svc = _service(workdir)
    with _client(svc) as c:
        _ready(c, 3)
        split = {"columns": ["user_id", "history", "k"], "data": frame.astype(object).where(frame.notna(), None).values.tolist()}
        got = c.post("/invocations", json={"dataframe_split": split})
    assert got.status_code == 200, got.text
    rows = got.json()["predictions"]
    assert [r["item_ids"] for r in rows] == [list(x) for x in expected["item_ids"]]
    assert [r["source"] for r in rows] == list(expected["source"])
