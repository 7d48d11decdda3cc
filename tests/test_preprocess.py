from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.pandas_reference import reference_sequences
from tasks.dask_cluster import DaskConfig, dask_client
from seqrec.catalog import DataVersion
from tasks.preprocess import PreprocessConfig, preprocess
from tasks.sources import DataConfig, resolve_inputs
from tasks.validate import validate_processed, validate_raw
from tests.conftest import small_events
from validation.config import ValidationConfig


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with dask_client(DaskConfig(processes=False, n_workers=1, threads_per_worker=2), tmp_path_factory.mktemp("dask")) as c:
        yield c


def _run(client, events: str, workdir: Path, pcfg: PreprocessConfig | None = None):
    inputs = resolve_inputs(DataConfig(source="files", events=events))
    vcfg = ValidationConfig()
    raw = validate_raw(inputs, vcfg, client, workdir / "run")
    res = preprocess(inputs, pcfg or PreprocessConfig(), vcfg, client, workdir)
    validate_processed(res, vcfg, raw, workdir / "run")
    return inputs, res


def test_small_log_is_ordered_deduplicated_and_split(client, tmp_path):
    small_events().to_parquet(tmp_path / "ev.parquet")
    _, res = _run(client, str(tmp_path / "ev.parquet"), tmp_path / "wd")
    seq = DataVersion(res.path).sequences().set_index("user_id")
    # vocab sorted by id: w=2 x=3 y=4 z=5; ties on timestamp keep the original row order (x before y)
    assert list(seq.loc["a", "items"]) == [5, 3, 4, 2]
    assert list(seq.loc["b", "items"]) == [4, 5, 3]
    assert list(seq.loc["a", "split"]) == [0, 0, 1, 2]
    assert list(seq.loc["a", "gap_buckets"]) == [1, 2, 2, 9]   # first, 50 s, 0 s, 99,900 s (1-3 days)
    assert list(seq.loc["a", "sessions"]) == [0, 0, 0, 1]
    assert res.drops["duplicates"] == 1
    assert res.counts == {"input_events": 11, "events": 10, "users": 3, "items": 4, "kcore_iterations": 1}
    vocab = pd.read_parquet(Path(res.path) / "vocab" / "items.parquet")
    assert vocab["item_id"].tolist() == ["w", "x", "y", "z"] and vocab["item_idx"].tolist() == [2, 3, 4, 5]
    assert (Path(res.path) / "quality" / "summary.json").is_file()
    assert not list((tmp_path / "wd" / "data").glob(".staging-*"))


def test_short_users_are_train_only_and_kcore_iterates(client, tmp_path):
    ev = small_events()
    ev = pd.concat([ev, pd.DataFrame({"user_id": ["d", "d"], "item_id": ["q", "x"], "timestamp": [1_000_000_000, 1_000_000_005],
                                      "event_type": ["view", "view"], "value": [1.0, 1.0]})])
    ev.to_parquet(tmp_path / "ev.parquet")
    _, res = _run(client, str(tmp_path / "ev.parquet"), tmp_path / "wd", PreprocessConfig(min_item_events=2, min_user_events=3))
    seq = DataVersion(res.path).sequences().set_index("user_id")
    # q (1 event) and w (1 event) go; then d has 1 event left and goes too
    assert "d" not in seq.index
    assert res.counts["items"] == 3 and res.counts["kcore_iterations"] >= 2
    one = DataVersion(res.path).sequences()
    assert all(list(s[-2:]) == [1, 2] for s, n in zip(one["split"], one["n_events"]) if n >= 3)


def test_matches_the_pandas_reference_and_reuses_the_version(client, synth_dir, tmp_path):
    pcfg = PreprocessConfig(min_user_events=5, min_item_events=3, rows_per_bucket=3000)
    inputs, res = _run(client, str(synth_dir / "events"), tmp_path / "wd", pcfg)
    got = DataVersion(res.path).sequences().sort_values("user_idx").reset_index(drop=True)
    want = reference_sequences(inputs, pcfg, ValidationConfig())
    assert len(got) == len(want) and res.counts["events"] == int(want["n_events"].sum())
    assert got["user_id"].tolist() == want["user_id"].tolist()
    for col in ("items", "event_types", "timestamps", "gap_buckets", "sessions", "split"):
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got[col], want[col])), col
    again = preprocess(inputs, pcfg, ValidationConfig(), client, tmp_path / "wd")
    assert again.reused and again.data_version == res.data_version
    other = preprocess(inputs, pcfg.model_copy(update={"min_user_events": 6}), ValidationConfig(), client, tmp_path / "wd")
    assert other.data_version != res.data_version


def test_processed_checks_catch_each_broken_invariant(client, tmp_path):
    """The vectorised per-part checks (100M events are validated part by part) flag exactly the
    user whose sequence breaks an invariant, and the merged table counts evaluable users."""
    import pyarrow as pa

    from validation.suites import merge_sequence_checks, sequence_checks

    small_events().to_parquet(tmp_path / "ev.parquet")
    _, res = _run(client, str(tmp_path / "ev.parquet"), tmp_path / "wd", PreprocessConfig(rows_per_bucket=1000))
    good = pa.Table.from_pandas(DataVersion(res.path).sequences(), preserve_index=False)
    base = merge_sequence_checks([sequence_checks(good)])
    assert base[["time_sorted", "split_ok", "lengths_ok"]].all().all()
    assert (base["eval_users"] == 3).all() and (base["min_item"] >= 2).all()

    def broken(col: str, user: int, fn) -> pd.DataFrame:
        df = DataVersion(res.path).sequences()
        df.at[user, col] = fn(np.asarray(df.at[user, col]))
        return merge_sequence_checks([sequence_checks(pa.Table.from_pandas(df, preserve_index=False))])

    cases = {"time_sorted": ("timestamps", lambda t: t[::-1].copy()),
             "split_ok": ("split", lambda s: np.roll(s, 1)),
             "lengths_ok": ("gap_buckets", lambda g: g[:-1])}
    for check, (col, fn) in cases.items():
        got = broken(col, 1, fn)
        assert list(got[check]) == [True, False, True], check
    assert broken("items", 2, lambda x: np.where(np.arange(len(x)) == 0, 1, x))["min_item"].tolist()[2] == 1
