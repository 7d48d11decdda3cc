"""Registry, offline A/B and promotion through the real flow (Prefect test harness, MLflow on
SQLite, synthetic data): a worse challenger is registered but never champion, a better one is
promoted, an identical rerun is not, rollback/promote commands follow the log, and the champion
loads in a fresh process without the work directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REGISTRY_SYNTH as SYNTH
from tests.conftest import registry_cfg as _cfg
from tests.conftest import registry_of as _registry
from tests.conftest import seqrec_cli as _cli


@pytest.fixture(scope="module")
def scenario(registry_scenario):
    return registry_scenario


def test_promotion_decisions(scenario):
    wd, s = scenario
    for name, version in (("medium", 1), ("crippled", 2), ("strong", 3), ("same", 4)):
        assert s[name]["status"] == "completed"
        assert s[name]["model"] == {"name": "seqrec", "version": version,
                                    "tracking_uri": f"sqlite:///{wd.resolve() / 'mlflow.db'}"}
    # first run: against the configured baseline, significantly better -> champion
    assert s["medium"]["ab"]["baseline"] == "pop" and s["medium"]["ab"]["reference_version"] is None
    assert s["medium"]["ab"]["decision"] == "pass" and s["medium"]["promoted"] is True
    # a deliberately worse challenger is registered but never promoted
    assert s["crippled"]["ab"]["decision"] == "fail" and s["crippled"]["promoted"] is False
    assert s["crippled"]["ab"]["reference_version"] == 1 and s["crippled"]["ab"]["lift"] < 0
    # a better one is
    assert s["strong"]["ab"]["decision"] == "pass" and s["strong"]["promoted"] is True
    assert s["strong"]["ab"]["ci_low"] > 0 and s["strong"]["ab"]["p_value"] < 0.05
    # the same config and seed on unchanged data: statistically identical, not promoted
    assert s["same"]["data_version"] == s["strong"]["data_version"]
    assert s["same"]["metrics"]["test"] == s["strong"]["metrics"]["test"]
    assert s["same"]["ab"]["lift"] == 0.0 and s["same"]["ab"]["decision"] == "fail" and not s["same"]["promoted"]
    reg = _registry(wd)
    assert reg.aliases() == {"champion": 3, "challenger": 4}
    assert [e["version"] for e in reg.entries()] == [1, 3]


def test_champion_is_rescored_on_the_same_users(scenario):
    """The champion's re-scored metrics on unchanged data equal its own evaluation exactly."""
    wd, s = scenario
    ab = s["crippled"]["ab"]
    decision = json.loads((Path(s["crippled"]["run_dir"]) / "ab" / "ab_decision.json").read_text())
    for k in ("ndcg@10", "hr@10", "mrr@10", "ndcg@20"):
        assert decision["means"]["reference"][k] == pytest.approx(s["medium"]["metrics"]["test"][k], abs=1e-12)
    assert ab["n_users"] == s["medium"]["metrics"]["test"]["users"]
    assert ab["guardrails"]["coverage@10"]["reference"] == pytest.approx(s["medium"]["metrics"]["test"]["coverage@10"])


def test_decisions_are_recorded(scenario):
    wd, s = scenario
    reg = _registry(wd)
    tags = {int(v.version): v.tags for v in reg.versions()}
    assert tags[1]["ab.decision"] == "pass" and tags[1]["ab.baseline"] == "pop"
    assert tags[2]["ab.decision"] == "fail" and tags[2]["ab.baseline"] == "version 1" and "lift" in tags[2]["ab.reasons"]
    assert tags[4]["ab.decision"] == "fail" and tags[4]["ab.baseline"] == "version 3"
    report = (Path(s["crippled"]["run_dir"]) / "ab" / "ab_report.md").read_text()
    assert "Decision: FAIL" in report and "version 1" in report
    # the MLflow run carries params, curves, final metrics, tags and the reports
    run = reg.client.get_run(s["strong"]["mlflow"]["mlflow_run_id"])
    assert run.data.params["train.epochs"] == "15" and run.data.tags["data_version"] == s["strong"]["data_version"]
    assert run.data.tags["prefect.flow_run_id"] and run.data.tags["git_commit"]
    assert run.data.metrics["test/ndcg_at_10"] == pytest.approx(s["strong"]["metrics"]["test"]["ndcg@10"])
    curve = reg.client.get_metric_history(run.info.run_id, "epoch/val/ndcg_at_10")
    assert len(curve) == len(s["strong"]["history"])
    arts = {a.path for a in reg.client.list_artifacts(run.info.run_id)}
    assert {"ab", "quality", "config.yaml", "training_curve.png", "per_user_test_metrics.parquet",
            "summary.json"} <= arts
    assert {a.path for a in reg.client.list_artifacts(run.info.run_id, "ab")} >= {"ab/ab_report.md", "ab/ab_chart.png"}


def test_champion_loads_in_a_fresh_process_without_the_workdir(scenario, tmp_path):
    wd, s = scenario
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("data", "runs"):  # only the MLflow store remains
        shutil.move(str(wd / name), str(moved / name))
    try:
        user = pd.read_parquet(Path(s["strong"]["per_user_metrics"].replace(str(wd), str(moved))))["user_id"].iloc[0]
        code = ("import mlflow, pandas as pd, json;"
                f"m = mlflow.pyfunc.load_model('models:/seqrec@champion');"
                f"out = m.predict(pd.DataFrame({{'user_id': ['{user}', None], 'history': [None, ['i1', 'i2']]}}),"
                " params={'k': 7});"
                "print(json.dumps({'items': [list(x) for x in out['item_ids']], 'source': list(out['source'])}))")
        env = {**os.environ, "MLFLOW_TRACKING_URI": s["strong"]["model"]["tracking_uri"]}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert got["source"] == ["user", "history"]
        assert all(len(x) == 7 and len(set(x)) == 7 for x in got["items"])
        rec = _cli(wd, "recommend", "--user", str(user), "--k", "5", "--json")
        assert rec.returncode == 0, rec.stderr[-3000:]
        out = json.loads(rec.stdout)
        assert out["model"] == "models:/seqrec@champion" and out["source"] == "user" and len(out["items"]) == 5
        assert [i["item_id"] for i in out["items"]] == got["items"][0][:5]
    finally:
        for name in ("data", "runs"):
            shutil.move(str(moved / name), str(wd / name))


def test_scores_map_across_catalogues(scenario):
    """Re-scoring an old model on another catalogue: columns follow item ids; unseen ids score -inf."""
    from tasks.bundle import Scorer

    wd, s = scenario
    sc = Scorer(Path(s["strong"]["run_dir"]) / "bundle")
    enc = sc.stored(np.arange(5))
    base = sc.scores(enc)
    ids = sc.item_ids[2:].astype(str)
    perm = np.random.default_rng(0).permutation(len(ids))
    catalogue = np.array([None, None, *ids[perm], "brand-new-item"], dtype=object)
    mapped = sc.scores_on(enc, catalogue)
    assert torch_equal(mapped[:, 2:-1], base[:, 2 + perm])
    assert bool((mapped[:, -1] == -float("inf")).all()) and bool((mapped[:, :2] == -float("inf")).all())


def test_bundle_from_before_repeat_bias_and_transitions_loads_as_trained(scenario, tmp_path):
    """A champion registered before `model.repeat_bias` and `model.transition_lags` existed (no keys in
    its config, no such tensors in its weights, no transitions.npz in its views) loads and scores as
    the plain network (logits h . item), not as today's default."""
    import torch

    from tasks.bundle import Scorer

    wd, s = scenario
    new = Path(s["strong"]["run_dir"]) / "bundle"
    old = tmp_path / "old-bundle"
    shutil.copytree(new, old)
    cfg = json.loads((old / "model_config.json").read_text())
    assert cfg.pop("repeat_bias") is True
    cfg.pop("transition_lags")
    (old / "model_config.json").write_text(json.dumps(cfg))
    weights = torch.load(old / "weights.pt", weights_only=True)
    newer = {k: weights.pop(k) for k in list(weights) if k == "repeat_bias" or k.startswith("trans_")}
    torch.save(weights, old / "weights.pt")
    (old / "views" / "transitions.npz").unlink()
    sc_old = Scorer(old)
    net = sc_old.net
    assert net.repeat_bias is None and net.transitions is None and not sc_old.cfg.transition_lags
    enc = sc_old.stored(np.arange(20))
    seq = sc_old._pad(enc.items)
    with torch.no_grad():
        h = net.last_state(seq, sc_old._pad(enc.etypes), sc_old._pad(enc.gaps), torch.as_tensor(enc.users),
                           sc_old.table)
        expect = h @ sc_old.table.T
    expect[:, :2] = -torch.inf
    assert torch_equal(sc_old.scores(enc), expect)
    assert bool((newer["repeat_bias"] != 0).any()), "the trained bundle learned a repeat bias"
    assert not torch_equal(Scorer(new).scores(enc), expect), "today's bundle scores differently"


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_cli_models_promote_rollback_score(scenario, tmp_path):
    wd, s = scenario
    listing = _cli(wd, "models", "--json")
    assert listing.returncode == 0, listing.stderr[-2000:]
    rows = {r["version"]: r for r in json.loads(listing.stdout)["versions"]}
    assert rows[3]["aliases"] == ["champion"] and rows[2]["decision"] == "fail"
    table = _cli(wd, "models")
    assert "champion" in table.stdout and "fail" in table.stdout
    refused = _cli(wd, "promote", "--version", "2")
    assert refused.returncode != 0 and "--force" in refused.stderr
    assert _registry(wd).champion() == 3
    back = _cli(wd, "rollback")
    assert back.returncode == 0, back.stderr[-2000:]
    assert _registry(wd).champion() == 1
    forced = _cli(wd, "promote", "--version", "2", "--force")
    assert forced.returncode == 0 and "forced" in forced.stdout
    reg = _registry(wd)
    assert reg.champion() == 2 and reg.version(2).tags["promotion.forced"] == "true"
    assert [e["action"] for e in reg.entries()] == ["promote", "promote", "rollback", "force"]
    assert _cli(wd, "rollback").returncode == 0 and _registry(wd).champion() == 1
    nothing = _cli(wd, "rollback")
    assert nothing.returncode != 0 and "no previous champion" in nothing.stderr
    scored = _cli(wd, "score", "--out", str(tmp_path / "scores.parquet"), "--k", "4")
    assert scored.returncode == 0, scored.stderr[-2000:]
    df = pd.read_parquet(tmp_path / "scores.parquet")
    assert df.groupby("user_id").size().eq(4).all() and df["user_id"].nunique() == SYNTH["users"]


def test_new_data_rescoring_and_log_reconcile(scenario, prefect_harness):
    """After the data changed, the champion is re-scored on the new test users; an alias moved
    behind the log's back (a crash between log append and alias move) is restored first."""
    from flows.training import training_flow

    wd, s = scenario
    reg = _registry(wd)
    champ = reg.champion()
    reg.client.set_registered_model_alias("seqrec", "champion", "4")  # the log does not say so
    out = training_flow(config=_cfg(train__epochs=3, data__synthetic={**SYNTH, "events": 20_000}),
                        workdir=str(wd), run_id="newdata")
    assert out["status"] == "completed" and out["data_version"] != s["strong"]["data_version"]
    assert out["ab"]["reference_version"] == champ
    assert out["ab"]["n_users"] == out["metrics"]["test"]["users"]


def test_paired_stats_and_guardrails():
    from tasks.ab import ABConfig, Side, decide, paired_stats

    cfg = ABConfig()
    rng = np.random.default_rng(0)
    ref = rng.random(400)
    same = paired_stats(ref, ref, cfg, 0)
    assert same["lift"] == 0 and same["p_value"] == 1.0 and same["ci_low"] == same["ci_high"] == 0
    better = paired_stats(ref + 0.05 + 0.01 * rng.standard_normal(400), ref, cfg, 0)
    assert better["lift"] == pytest.approx(0.05, abs=0.005) and better["ci_low"] > 0 and better["p_value"] < 1e-6
    users = np.array([f"u{i}" for i in range(400)])
    per = {m: ref for m in ("ndcg@10", "hr@10", "mrr@10")}
    fast = {"p50_ms": 1.0, "p95_ms": 2.0, "requests": 10}
    chal = Side("v2", users, {**per, "ndcg@10": ref + 0.05, "hr@10": ref - 0.2}, 0.5, 2)
    d = decide(cfg, chal, Side("v1", users[::-1], {k: v[::-1] for k, v in per.items()}, 0.5, 1), fast, 0)
    assert d["decision"] == "fail" and d["reasons"] == ["guardrail hr@10 failed (drop <= 0.01)"]
    slow = {"p50_ms": 80.0, "p95_ms": 90.0, "requests": 10}
    chal.per_user["hr@10"] = ref
    d = decide(cfg, chal, Side("v1", users, per, 0.5, 1), slow, 0)
    assert d["decision"] == "fail" and d["reasons"] == ["guardrail latency_p95_ms failed (<= 50.0)"]
    d = decide(cfg, chal, Side("v1", users, per, 0.5, 1), fast, 0)
    assert d["decision"] == "pass" and d["lift"] == pytest.approx(0.05)


def test_promotion_log_replay(tmp_path):
    from tasks.registry import Registry

    reg = Registry(client=None, name="m", root=tmp_path)
    for action, v in (("promote", 1), ("promote", 3), ("rollback", 1), ("force", 2), ("promote", 5), ("rollback", 2)):
        reg._append({"action": action, "version": v})
    assert reg.champion_stack() == [1, 2]
    with open(reg.log_path, "a") as f:
        f.write('{"action": "promote", "vers')  # torn last line: a crash mid-append
    assert reg.champion_stack() == [1, 2]


def test_prefect_artifacts_of_a_full_run(scenario):
    """The data-quality table, A/B report and run summary appear as artifacts of the flow run."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    wd, s = scenario

    async def read(run_id: str):
        async with get_client() as c:
            return await c.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))

    arts = {a.key: a for a in asyncio.run(read(s["strong"]["prefect"]["flow_run_id"]))}
    assert {"data-quality", "ab-report", "run-summary"} <= arts.keys()
    assert "PASS" in arts["ab-report"].data and "version 1" in arts["ab-report"].data
    rows = json.loads(arts["data-quality"].data) if isinstance(arts["data-quality"].data, str) else arts["data-quality"].data
    assert any(r["column"] == "timestamp" and r["result"] == "pass" for r in rows)


def test_a_diverging_run_fails_at_train_and_registers_nothing(scenario, prefect_harness):
    """lr 1e6 without warm-up: the flow stops at train with the step and the settings to change; the
    registry is as it was (a diverged run used to keep its best epoch and register it)."""
    from flows.training import training_flow
    from models.train import TrainingDivergedError

    wd, _ = scenario
    before = [int(v.version) for v in _registry(wd).versions()]
    with pytest.raises(TrainingDivergedError, match="step 2"):
        training_flow(config=_cfg(train__lr=1e6, train__warmup_epochs=0), workdir=str(wd), run_id="diverged")
    summary = json.loads((wd / "runs" / "diverged" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_stage"] == "train" and "train.lr" in summary["error"]
    assert [int(v.version) for v in _registry(wd).versions()] == before
