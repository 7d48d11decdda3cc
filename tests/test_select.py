"""Model selection on validation (`select.auto`, tasks/select.py): the rule, the candidates' configs,
and a real flow run that trains the candidates, records their scores and trains the winner."""

from __future__ import annotations

import pytest

from tasks.select import CONFIGURED, choose


def test_the_configured_model_stays_unless_another_wins_by_more_than_min_gain():
    assert choose({CONFIGURED: 0.30, "a": 0.301, "b": 0.2}, min_gain=0.002) == CONFIGURED
    assert choose({CONFIGURED: 0.30, "a": 0.303, "b": 0.31}, min_gain=0.002) == "b"
    assert choose({CONFIGURED: 0.30, "a": 0.30}, min_gain=0.0) == CONFIGURED  # a tie keeps the configured one


def test_candidates_are_the_users_config_with_overrides_and_views_serve_them_all():
    from flows.config import load_config
    from seqrec.errors import ConfigError

    cfg = load_config(None, ["select.auto=true", "train.epochs=7"])
    cands = {c.name: c for c in cfg.candidates()}
    assert list(cands) == [CONFIGURED, "transitions", "sasrec-ce"]
    assert cands["transitions"].model.transition_lags == 2 and cfg.views.transition_lags == 2
    assert cands["sasrec-ce"].model.encoder == "transformer" and cands["sasrec-ce"].train.lr == 1e-3
    assert all(c.train.epochs == 7 for c in cands.values())  # what the user set holds for every candidate
    assert load_config(None, []).views.transition_lags == 0  # without select.auto nothing changes
    with pytest.raises(ConfigError, match="must set model.\\* or train.\\*"):
        load_config(None, ["select.auto=true", "select.candidates={x: [data.events=elsewhere.csv]}"])


def test_a_run_with_select_auto_trains_the_winner(tmp_path, prefect_harness, cache_dir):
    from flows.config import validate_config
    from flows.training import training_flow
    from tasks.train import build_net

    cfg = validate_config({
        "data": {"source": "synthetic", "synthetic": {"users": 300, "items": 80, "events": 12000, "seed": 7}},
        "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2},
        "model": {"dim": 16, "max_len": 20}, "train": {"epochs": 3, "threads": 1},
        "select": {"auto": True, "seconds_each": 2.0, "min_gain": 0.0}})
    out = training_flow(config=cfg, workdir=str(tmp_path / "wd"), run_id="sel", until="train")
    sel = out["selection"]
    assert set(sel["candidates"]) == {CONFIGURED, "transitions", "sasrec-ce"}
    scores = {k: v["validation_ndcg@10"] for k, v in sel["candidates"].items()}
    assert sel["winner"] == choose(scores, 0.0) and all(0 < s < 1 for s in scores.values())
    assert all(v["seconds"] <= 2.0 + 10 for v in sel["candidates"].values())
    winner = next(c for c in cfg.candidates() if c.name == sel["winner"])
    net = build_net(out["data_path"], out["views_path"], winner.model)
    assert out["training"]["parameters"] == sum(p.numel() for p in net.parameters())
    assert not (tmp_path / "wd" / "runs" / "sel" / "select").exists() or not any(
        (tmp_path / "wd" / "runs" / "sel" / "select").rglob("*.pt")), "candidate weights left behind"


def test_selection_and_the_budgeted_schedule_reach_mlflow_metrics():
    from tasks.tracking import _final_metrics

    m = _final_metrics({"training": {"budgeted_epochs": 9, "final_lr": 1e-4, "epoch_seconds_est": None},
                        "selection": {"winner": "x", "candidates": {CONFIGURED: {"validation_ndcg@10": 0.3},
                                                                     "x": {"validation_ndcg@10": 0.31}}}})
    assert m == {"train/budgeted_epochs": 9.0, "train/final_lr": 1e-4, f"select/{CONFIGURED}/val/ndcg_at_10": 0.3,
                 "select/x/val/ndcg_at_10": 0.31}
