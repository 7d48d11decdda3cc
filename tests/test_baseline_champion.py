"""A champion even when the network loses (issue 18), through the real flow (Prefect test harness,
MLflow on SQLite, synthetic data): a first run whose network does not beat the Markov baseline
registers the baseline itself as a servable version and promotes it; the network stays challenger.
The baseline version serves real items through the pyfunc, `seqrec recommend`/`score` and the
scoring flow; its recorded metrics are the evaluation's; a later run re-scores it on the current test
users and promotes a network through the normal path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import registry_of as _registry
from tests.conftest import seqrec_cli as _cli
from tests.conftest import with_changes

SYNTH = {"users": 600, "items": 100, "events": 24_000, "seed": 7}  # test_registry's log: one cache entry
BASE = {"data": {"source": "synthetic", "synthetic": SYNTH},
        "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2},
        "model": {"dim": 32, "max_len": 20}, "train": {"batch_size": 64, "threads": 1, "progress": False},
        "ab": {"baseline": "markov", "latency_users": 30}}
# the network cannot win: one epoch at a learning rate that barely moves it (test_registry's "crippled")
LOSES = {"train__epochs": 1, "train__lr": 1e-5}
# a challenger the gate passes on purpose: non-inferiority within a margin no model can miss, guardrails
# open. What is tested is the path: the champion (a baseline bundle) re-scored and replaced normally
PASSES = {"train__epochs": 3, "ab__mode": "non_inferiority", "ab__margin": 1.0,
          "ab__guardrails": {"max_hr10_drop": 1.0, "max_coverage_drop": 1.0, "max_latency_ms": 60_000}}


def _cfg(**changes):
    from flows.config import validate_config

    return validate_config(with_changes(BASE, **changes))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_harness, cache_dir):
    """first (the network loses against Markov: the baseline becomes champion) -> second (passes
    against that champion)."""
    from flows.training import training_flow

    wd = tmp_path_factory.mktemp("baseline-champion") / "wd"
    first = training_flow(config=_cfg(**LOSES), workdir=str(wd), run_id="first")
    # the same run again (a retry or resume): nothing registered or promoted twice
    again = training_flow(config=_cfg(**LOSES), workdir=str(wd), run_id="first")
    # what the registry looked like after the first run (the second moves the champion)
    reg = _registry(wd)
    state = {"aliases": reg.aliases(), "entries": reg.entries(), "versions": [int(v.version) for v in reg.versions()],
             "again": again}
    second = training_flow(config=_cfg(**PASSES), workdir=str(wd), run_id="second")
    return wd, first, state, second


def test_first_run_where_the_baseline_wins_ends_with_the_baseline_as_champion(runs):
    wd, s, state, _ = runs
    assert s["status"] == "completed" and s["model"]["version"] == 1
    ab = s["ab"]
    assert ab["baseline"] == "markov" and ab["reference_version"] is None and ab["decision"] == "fail"
    assert s["promoted"] is False  # the network was not promoted
    b = s["baseline_champion"]
    assert b["version"] == 2 and b["baseline"] == "markov" and b["against"] == 1 and s["champion"] == 2
    reason = ("no champion yet; the markov baseline won the A/B against version 1: baseline registered as version 2 "
              "and promoted")
    assert b["reason"] == reason
    assert state["aliases"] == {"champion": 2, "challenger": 1}  # the network stays challenger
    again = state["again"]  # a rerun of the same run reuses both versions and keeps the decision
    assert state["versions"] == [1, 2] and again["status"] == "completed" and again["model"]["version"] == 1
    assert again["ab"] == ab and again["champion"] == 2 and again["promoted"] is False
    assert again["baseline_champion"]["version"] == 2 and again["baseline_champion"]["reused"] is True
    [entry] = state["entries"]
    assert entry["action"] == "promote" and entry["version"] == 2 and entry["previous"] is None
    assert entry["reason"] == reason and entry["kind"] == "baseline" and entry["network_version"] == 1
    assert entry["decision"]["decision"] == "fail" and entry["decision"]["baseline"] == "markov"

    reg = _registry(wd)
    tags = reg.version(2).tags
    assert tags["kind"] == "baseline" and tags["baseline"] == "markov" and tags["baseline.won_against"] == "1"
    assert tags["data_version"] == s["data_version"] and tags["ab.decision"] == "baseline_won"
    assert tags["ab.baseline"] == "version 1" and tags["ab.reference_version"] == "none"
    assert "seqrec.run_id" not in tags  # a retry of the run must find its network version, not this one
    assert reg.version(1).tags["ab.decision"] == "fail" and reg.version(1).tags["ab.baseline"] == "markov"
    # its recorded metrics are the evaluation's metrics of the Markov baseline
    markov = s["baselines"]["markov"]
    assert tags["test.ndcg_at_10"] == f"{markov['test']['ndcg@10']:.5f}"
    run = reg.client.get_run(reg.version(2).run_id)
    for split, key in (("test", "test"), ("validation", "val")):
        for k, v in markov[split].items():
            assert run.data.metrics[f"{key}/{k.replace('@', '_at_')}"] == pytest.approx(v, rel=1e-12), (split, k)
    assert run.data.tags["kind"] == "baseline"
    assert run.data.tags["mlflow.parentRunId"] == s["mlflow"]["mlflow_run_id"]


def _markov_top(data_path: Path, histories: list[np.ndarray], k: int, exclude_seen: bool) -> list[list[str]]:
    """Expected recommendations, computed from the data version directly (models/baselines.py)."""
    import torch

    from models.baselines import Markov
    from seqrec.catalog import DataVersion

    dv = DataVersion(data_path)
    seq = dv.sequences(["items", "n_train"])
    train = [np.asarray(x, np.int64)[:n] for x, n in zip(seq["items"], seq["n_train"])]
    s = Markov(train, dv.n_items).score(histories).clone()
    s[:, :2] = -torch.inf
    if exclude_seen:
        for i, h in enumerate(histories):
            s[i, torch.as_tensor(h)] = -torch.inf
    ids = dv.item_ids()
    return [[str(x) for x in ids[row]] for row in s.topk(k, dim=1).indices.numpy()]


def test_the_baseline_champion_serves_real_items(runs):
    """Through the registered pyfunc: stored users and given histories get the Markov baseline's
    top-k from the last item, never padding, the unknown item or a seen item."""
    import mlflow

    from seqrec.catalog import DataVersion

    wd, s, _, _ = runs
    reg = _registry(wd)
    model = mlflow.pyfunc.load_model("models:/seqrec/2")
    scorer = model.unwrap_python_model().scorer
    assert scorer.kind == "baseline" and scorer.net is None
    dv = DataVersion(s["data_path"])
    seq = dv.sequences(["user_id", "items"])
    ids = dv.item_ids()
    real = set(map(str, ids[2:]))
    users = seq["user_id"].astype(str).tolist()[:5]
    given = [str(ids[2]), str(ids[5]), str(ids[3])]
    frame = pd.DataFrame({"user_id": [*users, None, "never-seen"], "history": [None] * 5 + [given, None]})
    out = model.predict(frame, params={"k": 7})
    assert list(out["source"]) == ["user"] * 5 + ["history", "popular"]
    for items in out["item_ids"]:
        assert len(items) == 7 and len(set(items)) == 7 and set(items) <= real
    exclude = bool(scorer.info["exclude_seen"])
    hists = [np.asarray(x, np.int64) for x in seq["items"].iloc[:5]]
    assert [list(x) for x in out["item_ids"][:5]] == _markov_top(dv.path, hists, 7, exclude)
    if exclude:
        for items, h in zip(out["item_ids"][:5], hists):
            assert not set(items) & set(map(str, ids[h]))
        assert not set(out["item_ids"][5]) & set(given)
    assert all(np.isfinite(x).all() for x in out["scores"][:6])
    assert reg.version(2).tags["kind"] == "baseline"


def test_recommend_score_and_the_scoring_flow_with_the_baseline_champion(runs, tmp_path):
    from flows.scoring import scoring_flow
    from seqrec.catalog import DataVersion

    wd, s, _, _ = runs
    dv = DataVersion(s["data_path"])
    real = set(map(str, dv.item_ids()[2:]))
    user = str(dv.sequences(["user_id"])["user_id"].iloc[0])
    rec = _cli(wd, "recommend", "--version", "2", "--user", user, "--k", "5", "--json")
    assert rec.returncode == 0, rec.stderr[-3000:]
    got = json.loads(rec.stdout)
    assert got["source"] == "user" and len(got["items"]) == 5 and {i["item_id"] for i in got["items"]} <= real
    scored = _cli(wd, "score", "--version", "2", "--out", str(tmp_path / "scores.parquet"), "--k", "4")
    assert scored.returncode == 0, scored.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "scores.parquet")
    assert df.groupby("user_id").size().eq(4).all() and df["user_id"].nunique() == SYNTH["users"]
    assert set(df["item_id"]) <= real
    listing = _cli(wd, "models", "--json")
    assert listing.returncode == 0, listing.stderr[-3000:]
    rows = {r["version"]: r for r in json.loads(listing.stdout)["versions"]}
    assert rows[2]["decision"] == "baseline_won" and rows[2]["baseline"] == "version 1"
    assert rows[2]["test_ndcg@10"] == pytest.approx(s["baselines"]["markov"]["test"]["ndcg@10"], abs=1e-5)
    # the scoring flow serves whatever an alias names: here the first run's champion
    _registry(wd).client.set_registered_model_alias("seqrec", "first-champion", "2")
    res = scoring_flow(config=_cfg(), workdir=str(wd), alias="first-champion", k=3)
    assert res["version"] == 2 and res["users"] == SYNTH["users"]
    flow_df = pd.read_parquet(res["path"])
    assert set(flow_df["item_id"]) <= real and flow_df.groupby("user_id").size().eq(3).all()


def test_a_later_run_rescores_the_baseline_champion_and_replaces_it(runs):
    """The second run's A/B is against champion version 2 (the baseline bundle re-scored on the
    current test users, equal to the evaluation's Markov metrics on unchanged data) and promotes the
    network through the normal path."""
    wd, first, _, s = runs
    assert s["status"] == "completed" and s["model"]["version"] == 3
    ab = s["ab"]
    assert ab["reference_version"] == 2 and ab["baseline"] == "version 2"
    assert ab["decision"] == "pass" and s["promoted"] is True and s["champion"] == 3
    assert "baseline_champion" not in s
    decision = json.loads((Path(s["run_dir"]) / "ab" / "ab_decision.json").read_text())
    markov = first["baselines"]["markov"]["test"]
    assert s["data_version"] == first["data_version"]
    for k in ("ndcg@10", "hr@10", "mrr@10", "ndcg@20"):
        assert decision["means"]["reference"][k] == pytest.approx(markov[k], abs=1e-12), k
    assert ab["n_users"] == markov["users"]
    assert ab["guardrails"]["coverage@10"]["reference"] == pytest.approx(markov["coverage@10"])
    reg = _registry(wd)
    assert reg.champion() == 3 and reg.aliases()["challenger"] == 3
    assert [(e["version"], e["previous"]) for e in reg.entries()] == [(2, None), (3, 2)]
    assert reg.entries()[-1]["reason"] == "A/B pass against version 2"
    assert reg.version(3).tags["ab.reference_version"] == "2"


def test_baseline_registration_is_idempotent_per_run(runs):
    """A retried run gets back the baseline version it registered, and its network version is never
    mistaken for it (or the other way round)."""
    from tasks.tracking import TrackingConfig, client_for, log_and_register_baseline, registered_before

    wd, s, _, _ = runs
    client = client_for(TrackingConfig(), wd)
    again = log_and_register_baseline(TrackingConfig(), wd, Path(s["run_dir"]), s,
                                      Path(s["run_dir"]) / "markov-baseline" / "bundle", "markov", 1, None, None)
    assert again["version"] == 2 and again["reused"] is True
    mv, _ = registered_before(client, "seqrec", s, s["prefect"]["flow_run_id"])
    assert int(mv.version) == 1
    assert [int(v.version) for v in _registry(wd).versions()] == [1, 2, 3]
