"""The foundation's battery of broken input: each case fails the real flow at the right stage with
an error naming the file, the column and the rule, and leaves no data version behind."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_cfg, small_events, with_changes

NOW = int(time.time())


def _events(tmp: Path, df: pd.DataFrame | None = None, fmt: str = "csv") -> str:
    df = small_events() if df is None else df
    path = tmp / f"events.{fmt}"
    (df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False))
    return str(path)


def _with(**changes) -> pd.DataFrame:
    df = small_events().astype({"timestamp": object, "user_id": object, "value": object})
    for col, (row, val) in changes.items():
        df.loc[row, col] = val
    return df


def case_missing_column(tmp):
    return run_cfg(_events(tmp, small_events().drop(columns=["timestamp"]))), "timestamp", "missing"


def case_unparsable_timestamp(tmp):
    return run_cfg(_events(tmp, _with(timestamp=(2, "yesterday")))), "timestamp", "integer unix time"


def case_null_ids(tmp):
    return run_cfg(_events(tmp, _with(user_id=(3, None)), fmt="parquet")), "user_id", "must not be null"


def case_negative_timestamp(tmp):
    return run_cfg(_events(tmp, _with(timestamp=(1, -5)))), "timestamp", "1990"


def case_future_timestamp(tmp):
    return run_cfg(_events(tmp, _with(timestamp=(1, NOW + 10 * 86_400)))), "timestamp", "now"


def case_milliseconds(tmp):
    df = small_events()
    df["timestamp"] = df["timestamp"] * 1000
    return run_cfg(_events(tmp, df)), "timestamp", "set data.timestamp_unit"


def case_seconds_declared_as_milliseconds(tmp):
    return run_cfg(_events(tmp), data__timestamp_unit="ms"), "timestamp", "1990"


def case_mixed_numbers_and_text_timestamps(tmp):
    return run_cfg(_events(tmp, _with(timestamp=(2, "2001-09-09T01:46:40Z")))), "timestamp", "integer unix time"


def case_unparsable_iso_datetime(tmp):
    df = small_events()
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    df.loc[3, "timestamp"] = "2001-13-45T99:00:00Z"
    return run_cfg(_events(tmp, df)), "timestamp", "ISO-8601"


def case_null_event_type_without_a_declared_default(tmp):
    return (run_cfg(_events(tmp, _with(event_type=(2, None))), data__null_event_type=None), "event_type",
            "must not be null")


def case_event_type_filter_matches_nothing(tmp):
    return (run_cfg(_events(tmp), preprocess__event_types=["Purchased"]), "event_type",
            "preprocess.event_types=['purchased'] matches none of the events' types: cart, click, purchase, view")


def case_unknown_user_names_the_ids(tmp):
    pd.DataFrame({"user_id": ["a", "b"]}).to_csv(tmp / "users.csv", index=False)
    return run_cfg(_events(tmp), users=str(tmp / "users.csv")), "user_id", "sample: 'c', 'c', 'c'"


def case_very_long_id(tmp):
    return run_cfg(_events(tmp, _with(user_id=(3, "u" * 5000)))), "user_id", "at most 512 characters"


def case_unsupported_file_in_a_directory(tmp):
    (tmp / "parts").mkdir()
    small_events().to_csv(tmp / "parts" / "part-0.csv.gz", index=False)
    (tmp / "parts" / "notes.txt").write_text("not data")
    return run_cfg(str(tmp / "parts")), "notes.txt", "unsupported file type"


def case_corrupt_gzip(tmp):
    (tmp / "events.csv.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    return run_cfg(str(tmp / "events.csv.gz")), "events.csv.gz", "well-formed CSV (gzip-compressed)"


def case_malformed_json_lines(tmp):
    (tmp / "events.jsonl").write_text('{"user_id": "a", "item_id": "x", "timestamp": 1000000000}\n{"user_id": "b", \n')
    return run_cfg(str(tmp / "events.jsonl")), "events.jsonl", "well-formed JSON Lines"


def case_duplicate_user_across_a_users_directory(tmp):
    (tmp / "users").mkdir()
    pd.DataFrame({"user_id": ["a", "b"]}).to_csv(tmp / "users" / "part-0.csv", index=False)
    pd.DataFrame({"user_id": ["c", "a"]}).to_csv(tmp / "users" / "part-1.csv", index=False)
    return run_cfg(_events(tmp), users=str(tmp / "users")), "user_id", "unique"


def case_empty_input(tmp):
    path = tmp / "events.csv"
    path.write_text("user_id,item_id,timestamp,event_type,value\n")
    return run_cfg(str(path)), "events.csv", "must not be empty"


def case_duplicate_user_ids(tmp):
    users = pd.DataFrame({"user_id": ["a", "b", "c", "a"]})
    users.to_csv(tmp / "users.csv", index=False)
    return run_cfg(_events(tmp), users=str(tmp / "users.csv")), "user_id", "unique"


def case_duplicate_item_ids(tmp):
    items = pd.DataFrame({"item_id": ["w", "x", "y", "z", "z"]})
    items.to_parquet(tmp / "items.parquet")
    return run_cfg(_events(tmp), items=str(tmp / "items.parquet")), "item_id", "unique"


def case_out_of_range_value(tmp):
    return run_cfg(_events(tmp, _with(value=(4, 1e12)))), "value", "within"


def case_infinite_value(tmp):
    return run_cfg(_events(tmp, _with(value=(4, float("inf"))), fmt="parquet")), "value", "finite"


def case_nan_numeric_user_attribute(tmp):
    pd.DataFrame({"user_id": ["a", "b", "c"], "age": [30, float("inf"), 20]}).to_parquet(tmp / "users.parquet")
    return (run_cfg(_events(tmp), users=str(tmp / "users.parquet"), data__schema={"user_numeric": ["age"]}),
            "age", "finite")


def case_unknown_items(tmp):
    pd.DataFrame({"item_id": ["x", "y", "z"]}).to_csv(tmp / "items.csv", index=False)
    return run_cfg(_events(tmp), items=str(tmp / "items.csv")), "item_id", "items table"


def case_malformed_csv(tmp):
    path = tmp / "events.csv"
    path.write_text('user_id,item_id,timestamp\na,x,1000000000\nb,"y,1000000001\nc,z,1,2,3\n')
    return run_cfg(str(path)), "events.csv", "well-formed CSV"


def case_no_files(tmp):
    return run_cfg(str(tmp / "nothing-here" / "*.parquet")), "nothing-here", "no data files"


def case_unknown_event_type(tmp):
    return run_cfg(_events(tmp, _with(event_type=(0, "teleport")))), "event_type", "must be one of"


def case_not_utf8(tmp):
    path = tmp / "events.csv"
    path.write_bytes("user_id,item_id,timestamp\n\xe9a,x,1000000000\n".encode("latin-1"))
    return run_cfg(str(path)), "events.csv", "UTF-8"


def case_column_map_to_missing(tmp):
    return run_cfg(_events(tmp), data__columns={"user_id": "customer"}), "customer", "missing"


def case_items_without_id_column(tmp):
    pd.DataFrame({"id": ["x", "y"]}).to_csv(tmp / "items.csv", index=False)
    return run_cfg(_events(tmp), items=str(tmp / "items.csv")), "item_id", "missing"


def case_corrupt_parquet(tmp):
    (tmp / "events.parquet").write_bytes(b"PAR1 not really parquet")
    return run_cfg(str(tmp / "events.parquet")), "events.parquet", "well-formed parquet"


def case_empty_users_table(tmp):
    (tmp / "users.csv").write_text("user_id,age\n")
    return run_cfg(_events(tmp), users=str(tmp / "users.csv")), "users.csv", "must not be empty"


def case_null_user_id_in_users_table(tmp):
    pd.DataFrame({"user_id": ["a", None, "b"], "age": [1, 2, 3]}).to_csv(tmp / "users.csv", index=False)
    return run_cfg(_events(tmp), users=str(tmp / "users.csv")), "user_id", "must not be null"


def case_single_user(tmp):
    df = small_events()
    return run_cfg(_events(tmp, df[df["user_id"] == "a"])), "user_id", "at least 2 users need a test event"


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_broken_input_fails_cleanly(case, tmp_path, prefect_harness, cache_dir):
    from flows.training import training_flow

    (tmp_path / "in").mkdir()
    cfg, column, rule = case(tmp_path / "in")
    wd = tmp_path / "wd"
    state = training_flow(config=cfg, workdir=str(wd), run_id="r1", return_state=True)
    assert state.is_failed()
    import json

    summary = json.loads((wd / "runs" / "r1" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_stage"] in ("ingest", "validate_raw", "preprocess", "validate_processed")
    err = summary["error"]
    assert "file:" in err and "rule:" in err, err
    assert column in err and rule in err, err
    left = [p.name for p in (wd / "data").iterdir() if p.suffix != ".lock"] if (wd / "data").exists() else []
    assert not left, f"a data version or its staging was left behind: {left}"
    assert not (wd / "mlflow.db").exists() and not (wd / "registry").exists(), "tracking/registry touched"


# --------------------------------------------------------------------------- hostile configuration


def _cfg_outside_registry(tmp, wd):
    return {"tracking__registry_dir": str(tmp / "elsewhere" / "registry")}, "tracking.registry_dir", "outside the work directory"


def _cfg_dotdot_artifacts(tmp, wd):
    return {"tracking__artifact_location": str(wd / ".." / "escape")}, "tracking.artifact_location", "outside the work directory"


def _cfg_symlink_out_of_workdir(tmp, wd):
    (tmp / "target").mkdir()
    wd.mkdir()
    (wd / "registry").symlink_to(tmp / "target")  # looks inside, resolves outside
    return {"tracking__registry_dir": str(wd / "registry")}, "tracking.registry_dir", "outside the work directory"


def _cfg_sqlite_store_outside(tmp, wd):
    return {"tracking__tracking_uri": f"sqlite:///{tmp / 'other' / 'mlflow.db'}"}, "tracking.tracking_uri", "outside the work directory"


def _cfg_missing_grouplens_dir(tmp, wd):
    return {"data__ml100k_dir": str(tmp / "nope")}, "data.ml100k_dir", "does not exist"


def _cfg_nan_learning_rate(tmp, wd):
    return {"train__lr": float("nan")}, "train.lr", "finite"


def _cfg_unknown_key(tmp, wd):
    return {"train__epochz": 3}, "train.epochz", "Extra inputs are not permitted"


def _cfg_workdir_is_a_file(tmp, wd):
    wd.write_text("not a directory")
    return {}, "--workdir", "must be a directory"


CONFIG_CASES = [v for k, v in sorted(globals().items()) if k.startswith("_cfg_")]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.__name__[5:] for c in CONFIG_CASES])
def test_hostile_config_is_refused_before_anything_is_written(case, tmp_path, prefect_harness, cache_dir):
    """Paths from config are resolved (symlinks followed) and checked, values validated, before the
    flow writes anything: the error names the key and the rule; the work directory stays untouched."""
    from flows.config import validate_config
    from flows.training import training_flow
    from seqrec.errors import ConfigError
    from flows.config import check_paths

    (tmp_path / "in").mkdir()
    wd = tmp_path / "wd"
    changes, key, rule = case(tmp_path, wd)
    before = sorted(p.name for p in wd.iterdir()) if wd.is_dir() else None
    tree = with_changes({"data": {"source": "files", "events": _events(tmp_path / "in")},
                         "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2}}, **changes)
    with pytest.raises(ConfigError) as e:
        check_paths(validate_config(tree), wd)
    assert key in str(e.value) and rule in str(e.value), str(e.value)
    if key not in ("train.lr", "train.epochz"):  # a config that validates is also refused by the flow itself (deployments)
        state = training_flow(config=validate_config(tree), workdir=str(wd), run_id="r1", return_state=True)
        assert state.is_failed() and key in str(state.message) + repr(state.result(raise_on_failure=False))
    assert (sorted(p.name for p in wd.iterdir()) if wd.is_dir() else None) == before, "the work directory was written"
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "other").exists()
    assert not (tmp_path / "escape").exists() and not any((tmp_path / "target").glob("*"))


def test_quarantine_drops_a_small_fraction_and_counts_it(tmp_path, prefect_harness, cache_dir):
    from flows.training import training_flow

    df = pd.concat([small_events()] * 30, ignore_index=True)
    df["timestamp"] = df["timestamp"] + df.index  # no duplicates
    df.loc[5, "event_type"] = "teleport"
    df.loc[17, "value"] = float("inf")
    cfg = run_cfg(_events(tmp_path, df, fmt="parquet"), validation__mode="quarantine",
                  validation__max_quarantine_fraction=0.01)
    out = training_flow(config=cfg, workdir=str(tmp_path / "wd"), run_id="q", until="evaluate")
    assert out["status"] == "completed"
    assert out["drops"]["quarantined"] == 2 and out["dataset"]["events"] == len(df) - 2
    strict = run_cfg(_events(tmp_path, df, fmt="parquet"), validation__mode="quarantine",
                     validation__max_quarantine_fraction=0.001)
    state = training_flow(config=strict, workdir=str(tmp_path / "wd2"), run_id="q2", return_state=True)
    assert state.is_failed()


def test_quarantine_with_an_items_table(tmp_path, prefect_harness, cache_dir):
    """Reference checks are governed by their tolerance; quarantine must still work beside them."""
    from flows.training import training_flow

    df = pd.concat([small_events()] * 30, ignore_index=True)
    df["timestamp"] = df["timestamp"] + df.index
    df.loc[5, "event_type"] = "teleport"
    pd.DataFrame({"item_id": ["w", "x", "y", "z"]}).to_csv(tmp_path / "items.csv", index=False)
    cfg = run_cfg(_events(tmp_path, df, fmt="parquet"), items=str(tmp_path / "items.csv"),
                  validation__mode="quarantine", validation__max_quarantine_fraction=0.01)
    out = training_flow(config=cfg, workdir=str(tmp_path / "wd"), run_id="qi", until="preprocess")
    assert out["status"] == "completed" and out["drops"]["quarantined"] == 1


def test_a_data_contract_failure_is_one_clear_line_on_the_console(tmp_path, cache_dir):
    """`seqrec run` on a bad file: the command's one line names file, column, rule and sample; no
    traceback and no repeats from the engine unless --debug asks for them."""
    import subprocess
    import sys

    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\na,x,1000000000\nb,y,yesterday\n")
    seqrec = Path(sys.executable).with_name("seqrec")
    cmd = [str(seqrec), "run", "--workdir", str(tmp_path / "wd"), "--set", "data.source=files",
           "--set", f"data.events={path}", "--set", "dask.processes=false"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    log = out.stdout + out.stderr
    assert "Traceback" not in log, log
    assert log.count("offending rows") == 1, log
    assert "run failed at stage validate_raw" in log and "column: timestamp" in log and "sample: 'yesterday'" in log
