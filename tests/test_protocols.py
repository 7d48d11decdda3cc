"""Evaluation protocols: leave-one-out and the temporal holdout are written into the data version as
split codes, the processed gate checks them, evaluation reads its targets from them, and the A/B
refuses to judge a champion on test events it trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from seqrec.splits import CONTEXT, LATER, TEST, TRAIN, VALID, Cutoffs, resolve_cutoff, split_codes


def test_leave_one_out_codes_by_hand():
    codes, n_train = split_codes(np.array([4, 2, 3]), np.arange(9), None)
    assert codes.tolist() == [TRAIN, TRAIN, VALID, TEST, TRAIN, TRAIN, TRAIN, VALID, TEST]
    assert n_train.tolist() == [2, 2, 1]


def test_temporal_codes_by_hand():
    # cut-offs: validation at 10, test at 20
    ts = np.array([1, 5, 12, 15, 21, 30,   # trains 2, validates at 12, 15 is context, tests at 21, 30 later
                   11, 22,                 # nothing before 10: no validation, 11 is context, tests at 22
                   2, 3,                   # nothing after 10: trains only
                   25, 26])                # nothing before 20: never evaluated
    codes, n_train = split_codes(np.array([6, 2, 2, 2]), ts, Cutoffs(valid=10, test=20))
    assert codes.tolist() == [TRAIN, TRAIN, VALID, CONTEXT, TEST, LATER,
                              CONTEXT, TEST,
                              TRAIN, TRAIN,
                              LATER, LATER]
    assert n_train.tolist() == [2, 0, 2, 0]


def test_cutoffs_from_fractions_seconds_and_dates():
    ts = np.arange(1000, 2000)
    assert resolve_cutoff(0.9, ts) == 1900 and resolve_cutoff("0.5", ts) == 1500
    assert resolve_cutoff(1_700_000_000, ts) == 1_700_000_000
    assert resolve_cutoff("2023-11-14T22:13:20Z", ts) == 1_700_000_000
    assert resolve_cutoff("2023-11-14", ts) == 1_699_920_000  # a date without zone is UTC midnight
    with pytest.raises(ValueError):
        resolve_cutoff(-1, ts)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """A synthetic log whose users are active over the same period, preprocessed under both
    protocols (and gated)."""
    from tasks.synthetic import generate
    from tasks.dask_cluster import DaskConfig, dask_client
    from tasks.preprocess import PreprocessConfig, SplitConfig, preprocess
    from tasks.sources import SYNTH_SCHEMA, DataConfig, resolve_inputs
    from tasks.validate import validate_processed, validate_raw
    from validation.config import ValidationConfig

    wd = tmp_path_factory.mktemp("protocols")
    synth_dir = wd / "src"
    generate(300, 80, 12_000, 7, synth_dir, start_days=0)
    out = {}
    with dask_client(DaskConfig(processes=False, n_workers=1), wd) as client:
        inputs = resolve_inputs(DataConfig(source="files", events=str(synth_dir / "events"),
                                           users=str(synth_dir / "users.parquet"),
                                           items=str(synth_dir / "items.parquet"), schema=SYNTH_SCHEMA.model_dump()))
        raw = validate_raw(inputs, ValidationConfig(), client, wd / "run")
        ts = np.sort(pd.read_parquet(synth_dir / "events")["timestamp"].to_numpy())
        day = pd.Timestamp(int(ts[int(0.7 * len(ts))]), unit="s").date()  # a date, as YAML reads 2020-01-09
        for name, split in (("loo", SplitConfig()), ("temporal", SplitConfig(protocol="temporal", cutoff=0.7)),
                            ("early", SplitConfig(protocol="temporal", cutoff=0.5)),
                            ("dated", SplitConfig(protocol="temporal", cutoff=day))):
            res = preprocess(inputs, PreprocessConfig(), ValidationConfig(), client, wd, split=split)
            validate_processed(res, ValidationConfig(), raw, wd / "run", client)
            out[name] = Path(res.path)
    return out


def _events(path: Path):
    seq = pq.read_table(path / "sequences.parquet").to_pandas()
    ts = np.concatenate([np.asarray(t) for t in seq["timestamps"]])
    codes = np.concatenate([np.asarray(c) for c in seq["split"]])
    return ts, codes


def test_temporal_holdout_tests_only_on_events_after_all_training(versions):
    from seqrec.catalog import DataVersion

    ts, codes = _events(versions["temporal"])
    meta = DataVersion(versions["temporal"]).split
    assert meta["protocol"] == "temporal" and meta["valid_cutoff"] < meta["test_cutoff"]
    assert ts[codes == TRAIN].max() < meta["valid_cutoff"] <= ts[codes == VALID].min()
    assert ts[codes == TEST].min() >= meta["test_cutoff"] > ts[codes == VALID].max()
    assert len(np.unique(np.flatnonzero(codes == TEST))) >= 50
    # leave-one-out on the same log: some users' test events precede other users' training events
    ts, codes = _events(versions["loo"])
    assert ts[codes == TEST].min() < ts[codes == TRAIN].max()
    assert versions["loo"].name != versions["temporal"].name  # the protocol is part of the data version


def test_a_dated_cutoff_places_the_validation_cutoff_before_it(versions):
    from seqrec.catalog import DataVersion

    meta = DataVersion(versions["dated"]).split
    ts, codes = _events(versions["dated"])
    assert meta["valid_cutoff"] < meta["test_cutoff"] and (codes == VALID).any() and (codes == TEST).any()
    assert ts[codes == TEST].min() >= meta["test_cutoff"] == pd.Timestamp(meta["test_cutoff"], unit="s").normalize().value // 10**9


def test_temporal_evaluation_inputs_are_everything_before_the_cutoff(versions):
    from tasks.features import ViewsConfig, build_views
    from tasks.train import load_sequences
    from models.data import eval_inputs

    path = versions["temporal"]
    views = build_views(path, ViewsConfig(text_encoder="tfidf"), path.parent / "cache")
    seqs = load_sequences(path, views)
    seq = pq.read_table(path / "sequences.parquet").to_pandas()
    test = eval_inputs(seqs, 50, "test")
    assert len(test["rows"]) > len(np.unique(test["rows"]))  # up to eval.next_events (5) targets per user
    for row, p, hist, target in zip(*seqs.test_targets, test["history"], test["target"]):
        codes = np.asarray(seq["split"].iat[row])
        assert codes[p] == TEST and np.array_equal(hist, np.asarray(seq["items"].iat[row])[:p])
        assert target == seq["items"].iat[row][p]
        assert set(codes[:p].tolist()) <= {TRAIN, VALID, CONTEXT, TEST}  # earlier test events are history
    valid = eval_inputs(seqs, 50, "validation")
    for row, hist in zip(valid["rows"][:50], valid["history"][:50]):
        assert len(hist) == seqs.n_train[row]  # validation sees the training events only


def test_the_ab_refuses_a_champion_trained_on_the_test_events(versions, tmp_path):
    """A champion trained under leave-one-out has learned from most events before an early cut-off:
    judged on that period it would look better than it is."""
    from models.net import ModelConfig
    from models.train import TrainConfig
    from tasks.ab import trained_on_test
    from tasks.bundle import Scorer, write_bundle
    from tasks.features import ViewsConfig, build_views
    from tasks.train import train

    path = versions["loo"]
    views = build_views(path, ViewsConfig(text_encoder="tfidf"), tmp_path / "c")
    mcfg = ModelConfig(dim=16, layers=1, max_len=10)
    tr = train(path, views, mcfg, TrainConfig(epochs=1, threads=1, progress=False), 0, tmp_path / "run",
               log=lambda m: None)
    scorer = Scorer(write_bundle(tmp_path / "bundle", path, views, mcfg, Path(tr["model_path"]), True))
    same = trained_on_test(scorer, path)
    assert same["checked"] and same["events"] == 0  # its own held-out events: a fair comparison
    early = trained_on_test(scorer, versions["early"])
    assert early["events"] > early["test_events"] // 2 and early["sample"]
    # logs give several events one timestamp: at the last training second only the trained items count
    seq = pq.read_table(path / "sequences.parquet").to_pandas()
    row = seq.iloc[0]
    n, last = int(row["n_train"]), int(row["timestamps"][int(row["n_train"]) - 1])
    ids = scorer.item_ids[np.asarray(row["items"])].astype(str)
    other = next(i for i in scorer.item_ids[2:].astype(str) if i not in set(ids[:n]))
    user = [row["user_id"]] * 4
    hit = scorer.trained_on(user, [ids[n - 1], other, other, other], [last, last, last - 1, last + 1])
    assert hit.tolist() == [True, False, True, False]


def test_temporal_next_events_are_several_targets_per_user_counted_once(tmp_path):
    """eval.next_events=3: each user's first 3 events after the cut-off are test targets, each with
    every earlier event as history; the user's metric is their mean, so the A/B still pairs users."""
    from models.metrics import by_user, evaluate_ranking

    codes, _ = split_codes(np.array([6]), np.array([1, 5, 12, 21, 22, 30]), Cutoffs(10, 20, next_events=3))
    assert codes.tolist() == [TRAIN, TRAIN, VALID, TEST, TEST, TEST]
    arrays = {"hr@10": np.array([1.0, 0.0, 1.0, 0.0, 0.5])}
    assert by_user(arrays, np.array([0, 0, 0, 4, 4]))["hr@10"].tolist() == [pytest.approx(2 / 3), 0.25]
    scores = torch.rand(5, 30)
    m, per = evaluate_ranking(lambda idx: scores[idx], 5, np.array([3, 4, 5, 6, 7]), None, 30,
                              users=np.array([0, 0, 0, 4, 4]))
    assert m["users"] == 2 and m["targets"] == 5 and len(per["ndcg@10"]) == 2


def test_a_split_without_validation_targets_is_refused_by_the_gate(tmp_path):
    """A validation cut-off before every event leaves no validation target: the processed gate says
    so (file, column, rule) instead of training failing later without a validation metric."""
    from seqrec.errors import DataContractError
    from tasks.dask_cluster import DaskConfig, dask_client
    from tasks.preprocess import PreprocessConfig, SplitConfig, preprocess
    from tasks.sources import SYNTH_SCHEMA, DataConfig, resolve_inputs
    from tasks.synthetic import generate
    from tasks.validate import validate_processed, validate_raw
    from validation.config import ValidationConfig

    generate(60, 30, 2_000, 3, tmp_path / "src", start_days=0)
    with dask_client(DaskConfig(processes=False, n_workers=1), tmp_path) as client:
        inputs = resolve_inputs(DataConfig(source="files", events=str(tmp_path / "src" / "events"),
                                           schema=SYNTH_SCHEMA.model_dump()))
        raw = validate_raw(inputs, ValidationConfig(), client, tmp_path / "run")
        res = preprocess(inputs, PreprocessConfig(), ValidationConfig(), client, tmp_path,
                         split=SplitConfig(protocol="temporal", cutoff=0.8, validation_cutoff=1_000_000_000))
        with pytest.raises(DataContractError, match="validation event"):
            validate_processed(res, ValidationConfig(), raw, tmp_path / "run", client)
    assert not Path(res.path).exists()  # the version never became visible


@pytest.mark.slow  # two flow runs (~45 s); tests/test_protocols.py checks the refusal rule itself by default
def test_a_temporal_run_refuses_to_judge_a_champion_on_events_it_trained_on(tmp_path, prefect_harness, cache_dir):
    """Through the flow: a leave-one-out champion, then a temporal run on the same log whose test
    period the champion trained on. The A/B says `refused` with the count, nothing is promoted, and
    the decision is recorded on the version."""
    from flows.config import validate_config
    from flows.training import training_flow
    from tasks.registry import open_registry
    from tasks.tracking import TrackingConfig

    base = {"data": {"source": "synthetic", "synthetic": {"users": 300, "items": 80, "events": 12_000, "seed": 7,
                                                           "start_days": 0}},
            "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2},
            "model": {"dim": 32, "max_len": 20}, "train": {"epochs": 10, "batch_size": 64, "threads": 1,
                                                            "progress": False},
            "ab": {"baseline": "pop", "latency_users": 20, "latency_rounds": 2}}
    wd = tmp_path / "wd"
    first = training_flow(config=validate_config(base), workdir=str(wd), run_id="loo")
    assert first["promoted"] is True and first["ab"]["decision"] == "pass"
    temporal = validate_config({**base, "eval": {"protocol": "temporal", "cutoff": 0.6}})
    second = training_flow(config=temporal, workdir=str(wd), run_id="temporal")
    ab = second["ab"]
    assert ab["decision"] == "refused" and second["promoted"] is False and ab["reference_version"] == 1
    assert "was trained on" in ab["reasons"][0] and "--force" in ab["reasons"][0]
    reg = open_registry(TrackingConfig(), wd)
    assert reg.champion() == 1 and reg.version(2).tags["ab.decision"] == "refused"
    assert "REFUSED" in (Path(second["run_dir"]) / "ab" / "ab_report.md").read_text()
