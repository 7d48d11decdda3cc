"""Legitimate but unusual input is processed, not refused: each variation of a plain log (compressed,
split into parts, JSON Lines, datetime or millisecond timestamps, other column names, other case,
tables as directories) gives exactly the processed sequences, counts and tables of the plain log.
The broken variations are in tests/test_bad_input.py."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cfg

TYPES = ["view", "click", "cart", "purchase"]


def base_log() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """40 users, 15 items, ~400 events in 2023 with types, values, a users and an items table."""
    rng = np.random.default_rng(3)
    n = 400
    events = pd.DataFrame({
        "user_id": [f"u{i:02d}" for i in rng.integers(0, 40, n)],
        "item_id": [f"i{i:02d}" for i in rng.integers(0, 15, n)],
        "timestamp": 1_672_531_200 + np.sort(rng.integers(0, 86_400 * 60, n)),
        "event_type": rng.choice(TYPES, n),
        "value": rng.integers(1, 6, n).astype(float),
    })
    users = pd.DataFrame({"user_id": [f"u{i:02d}" for i in range(40)], "age": rng.integers(18, 70, 40),
                          "country": rng.choice(["de", "fr", None], 40)})
    items = pd.DataFrame({"item_id": [f"i{i:02d}" for i in range(15)], "brand": rng.choice(["a", "b", None], 15),
                          "title": [f"item {i}" for i in range(15)]})
    return events, users, items


SCHEMA = {"user_categorical": ["country"], "user_numeric": ["age"], "item_categorical": ["brand"],
          "item_text": ["title"]}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from tasks.dask_cluster import DaskConfig, dask_client

    with dask_client(DaskConfig(processes=False, n_workers=1), tmp_path_factory.mktemp("dask")) as c:
        yield c


def processed(client, wd: Path, cfg) -> tuple[pd.DataFrame, dict, dict[str, pd.DataFrame]]:
    """Raw gate, preprocessing and processed gate (the flow's data stages) -> sequences, counts, tables."""
    from seqrec.catalog import DataVersion
    from tasks.preprocess import preprocess
    from tasks.sources import resolve_inputs
    from tasks.validate import validate_processed, validate_raw

    inputs = resolve_inputs(cfg.data)
    raw = validate_raw(inputs, cfg.validation, client, wd / "run")
    qrules = next(r for r in raw if r.table == "events").quarantine_rules or None
    res = preprocess(inputs, cfg.preprocess, cfg.validation, client, wd, qrules)
    validate_processed(res, cfg.validation, raw, wd / "run", client)
    dv = DataVersion(Path(res.path))
    seq = dv.sequences().sort_values("user_idx").reset_index(drop=True)
    seq = seq.apply(lambda col: col.map(tuple) if col.map(lambda v: isinstance(v, np.ndarray)).any() else col)
    tables = {name: pd.read_parquet(Path(res.path) / "tables" / f"{name}.parquet")
              for name in ("users", "items") if (Path(res.path) / "tables" / f"{name}.parquet").is_file()}
    counts = {k: v for k, v in dv.counts.items() if k != "input_events"}
    return seq, counts, tables


def _write(df: pd.DataFrame, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if ".parquet" in name:
        df.to_parquet(path, index=False)
    elif ".jsonl" in name:
        df.to_json(path, orient="records", lines=True, compression="infer")
    else:
        df.to_csv(path, index=False, sep="\t" if ".tsv" in name else ",", compression="infer")
    return str(path)


def _split(df: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    bounds = np.linspace(0, len(df), n + 1).astype(int)
    return [df.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _tables(tmp: Path, users: pd.DataFrame, items: pd.DataFrame) -> dict:
    return {"users": _write(users, tmp / "users.parquet"), "items": _write(items, tmp / "items.parquet"),
            "data__schema": SCHEMA}


def _cfg(events: str, tables: dict, **extra):
    t = dict(tables)
    return run_cfg(events, users=t.pop("users"), items=t.pop("items"), **t, **extra)


# ----------------------------------------------------------------------- the variations
# each: (tmp, events, users, items) -> (the variation's config, the plain log it must equal, the plain config's extra)


def v_csv(tmp, ev, us, it):
    return _cfg(_write(ev, tmp / "events.csv"), _tables(tmp, us, it)), None


def v_csv_gzip(tmp, ev, us, it):
    return _cfg(_write(ev, tmp / "events.csv.gz"), _tables(tmp, us, it)), None


def v_csv_zstd(tmp, ev, us, it):
    return _cfg(_write(ev, tmp / "events.csv.zst"), _tables(tmp, us, it)), None


def v_tsv_gzip(tmp, ev, us, it):
    return _cfg(_write(ev, tmp / "events.tsv.gz"), _tables(tmp, us, it)), None


def v_json_lines(tmp, ev, us, it):
    return _cfg(_write(ev, tmp / "events.jsonl"), _tables(tmp, us, it)), None


def v_json_lines_gzip(tmp, ev, us, it):
    return _cfg(_write(ev, tmp / "events.jsonl.gz"), _tables(tmp, us, it)), None


def v_directory_of_gzip_parts_with_spark_bookkeeping(tmp, ev, us, it):
    for k, part in enumerate(_split(ev, 3)):
        _write(part, tmp / "events" / f"part-{k:05d}.csv.gz")
    (tmp / "events" / "_SUCCESS").write_text("")
    (tmp / "events" / ".part-00000.csv.gz.crc").write_bytes(b"\x00")
    return _cfg(str(tmp / "events"), _tables(tmp, us, it)), None


def v_directory_mixing_plain_compressed_and_parquet(tmp, ev, us, it):
    a, b, c = _split(ev, 3)
    _write(a, tmp / "events" / "date=2023-01-01" / "part-0.csv")
    _write(b, tmp / "events" / "date=2023-01-02" / "part-0.csv.gz")
    _write(c, tmp / "events" / "date=2023-01-03" / "part-0.parquet")
    return _cfg(str(tmp / "events"), _tables(tmp, us, it)), None


def v_glob_of_compressed_parts(tmp, ev, us, it):
    for k, part in enumerate(_split(ev, 2)):
        _write(part, tmp / "in" / f"events-{k}.csv.zst")
    return _cfg(str(tmp / "in" / "events-*.csv.zst"), _tables(tmp, us, it)), None


def v_datetime_microseconds(tmp, ev, us, it):
    ev = ev.assign(timestamp=pd.to_datetime(ev["timestamp"], unit="s").astype("datetime64[us]"))
    return _cfg(_write(ev, tmp / "events.parquet"), _tables(tmp, us, it)), None


def v_datetime_milliseconds_in_a_timezone(tmp, ev, us, it):
    local = pd.to_datetime(ev["timestamp"], unit="s", utc=True).dt.tz_convert("Europe/Berlin").astype(
        "datetime64[ms, Europe/Berlin]")
    return _cfg(_write(ev.assign(timestamp=local), tmp / "events.parquet"), _tables(tmp, us, it)), None


def v_datetime_nanoseconds_utc_with_subsecond_parts(tmp, ev, us, it):
    ts = pd.to_datetime(ev["timestamp"], unit="s", utc=True) + pd.to_timedelta(np.arange(len(ev)) % 997, unit="ms")
    return _cfg(_write(ev.assign(timestamp=ts), tmp / "events.parquet"), _tables(tmp, us, it)), None


def v_iso_text_with_offsets(tmp, ev, us, it):
    ts = pd.to_datetime(ev["timestamp"], unit="s", utc=True).dt.tz_convert("America/New_York")
    text = ts.map(lambda t: t.isoformat())
    return _cfg(_write(ev.assign(timestamp=text), tmp / "events.csv"), _tables(tmp, us, it)), None


def v_integer_milliseconds(tmp, ev, us, it):
    ms = ev["timestamp"] * 1000 + np.arange(len(ev)) % 1000
    return _cfg(_write(ev.assign(timestamp=ms), tmp / "events.csv"), _tables(tmp, us, it),
                data__timestamp_unit="ms"), None


def v_integer_microseconds(tmp, ev, us, it):
    return _cfg(_write(ev.assign(timestamp=ev["timestamp"] * 10**6), tmp / "events.parquet"), _tables(tmp, us, it),
                data__timestamp_unit="us"), None


def v_integer_nanoseconds_in_csv_with_a_null(tmp, ev, us, it):
    ns = ev["timestamp"].astype("Int64") * 10**9 + 123_456_789
    ns[5] = pd.NA  # a null (quarantined) keeps the column integer: no float rounding of 1.7e18
    plain = ev.drop(index=5)
    return (_cfg(_write(ev.assign(timestamp=ns), tmp / "events.csv"), _tables(tmp, us, it), data__timestamp_unit="ns",
                 validation__mode="quarantine"), (plain, {}))


def v_explicit_column_map_wins(tmp, ev, us, it):
    renamed = ev.rename(columns={"user_id": "customer", "timestamp": "event_time"})
    renamed["user_id"] = "someone-else"  # a column with the contract's name that is not the user
    renamed["timestamp"] = 0
    return _cfg(_write(renamed, tmp / "events.parquet"), _tables(tmp, us, it),
                data__columns={"user_id": "customer", "timestamp": "event_time"}), None


def v_event_types_in_other_case_and_filter_in_other_case(tmp, ev, us, it):
    odd = ev.assign(event_type=ev["event_type"].map({"view": "View", "click": " CLICK ", "cart": "Cart",
                                                     "purchase": "PURCHASE"}))
    keep = {"preprocess__event_types": ["Purchase", "click"], "views__engage_event_types": ["PURCHASE"]}
    return (_cfg(_write(odd, tmp / "events.csv"), _tables(tmp, us, it), **keep),
            (ev, {"preprocess__event_types": ["purchase", "click"]}))


def v_null_event_types_get_the_declared_type(tmp, ev, us, it):
    nulls = ev.assign(event_type=ev["event_type"].where(np.arange(len(ev)) % 7 != 0, None))
    plain = ev.assign(event_type=ev["event_type"].where(np.arange(len(ev)) % 7 != 0, "event"))
    return _cfg(_write(nulls, tmp / "events.parquet"), _tables(tmp, us, it)), (plain, {})


def v_tables_as_directories(tmp, ev, us, it):
    for k, part in enumerate(_split(us, 3)):
        _write(part, tmp / "users" / f"part-{k}.csv")
    _write(it.iloc[:7], tmp / "items" / "a.parquet")
    _write(it.iloc[7:], tmp / "items" / "b.parquet")
    tables = {"users": str(tmp / "users"), "items": str(tmp / "items" / "*.parquet"), "data__schema": SCHEMA}
    return _cfg(_write(ev, tmp / "events.parquet"), tables), None


def v_unicode_ids_in_another_normal_form(tmp, ev, us, it):
    def nfd(s: pd.Series) -> pd.Series:
        return s.map(lambda v: unicodedata.normalize("NFD", v) if isinstance(v, str) else v)

    accented = {"user_id": lambda s: s.str.replace("u0", "ü0"), "item_id": lambda s: s.str.replace("i1", "é1")}
    plain_ev = ev.assign(**{c: f(ev[c]) for c, f in accented.items()})
    plain_us = us.assign(user_id=accented["user_id"](us["user_id"]))
    plain_it = it.assign(item_id=accented["item_id"](it["item_id"]))
    odd_ev = plain_ev.assign(user_id=" " + nfd(plain_ev["user_id"]), item_id=nfd(plain_ev["item_id"]))
    return (_cfg(_write(odd_ev, tmp / "events.csv"),
                 _tables(tmp, plain_us.assign(user_id=nfd(plain_us["user_id"])), plain_it.assign(
                     item_id=nfd(plain_it["item_id"])))),
            (plain_ev, {}, plain_us, plain_it))


VARIATIONS = [v for k, v in sorted(globals().items()) if k.startswith("v_")]
_PLAIN: dict[tuple, tuple] = {}


@pytest.mark.parametrize("variation", VARIATIONS, ids=[v.__name__[2:] for v in VARIATIONS])
def test_a_legitimate_variation_gives_the_plain_logs_data(variation, tmp_path, client, cache_dir):
    ev, us, it = base_log()
    cfg, plain = variation(tmp_path / "variation", ev, us, it)
    plain_ev, plain_extra, plain_us, plain_it = (*plain, us, it)[:4] if plain else (ev, {}, us, it)
    seq, counts, tables = processed(client, tmp_path / "wd-variation", cfg)
    key = (str(sorted(plain_extra.items())), *(int(pd.util.hash_pandas_object(f).sum()) for f in (plain_ev, plain_us,
                                                                                                   plain_it)))
    if key not in _PLAIN:  # most variations share one plain log: process it once
        ref = _cfg(_write(plain_ev, tmp_path / "plain" / "events.parquet"),
                   _tables(tmp_path / "plain", plain_us, plain_it), **plain_extra)
        _PLAIN[key] = processed(client, tmp_path / "wd-plain", ref)
    want_seq, want_counts, want_tables = _PLAIN[key]
    assert counts == want_counts
    pd.testing.assert_frame_equal(seq, want_seq)
    assert tables.keys() == want_tables.keys() == {"users", "items"}
    for name in tables:
        pd.testing.assert_frame_equal(tables[name], want_tables[name])


def test_null_categorical_attributes_are_the_missing_category(tmp_path, client, cache_dir):
    """A null brand or country is the attribute's own `missing` code (0) in the views, never a crash."""
    from tasks.features import ViewsConfig, item_view, user_view

    ev, us, it = base_log()
    cfg = _cfg(_write(ev, tmp_path / "events.parquet"), _tables(tmp_path, us, it))
    processed(client, tmp_path / "wd", cfg)
    version = next(p for p in (tmp_path / "wd" / "data").iterdir() if p.is_dir() and not p.name.startswith("."))
    items = pd.read_parquet(version / "tables" / "items.parquet")
    view = item_view(version, ViewsConfig(), tmp_path / "cache")
    null_brand = items.loc[items["brand"].isna(), "item_idx"].to_numpy()
    assert len(null_brand) and (view["cat"][null_brand, 0] == 0).all()
    assert (view["cat"][items.loc[items["brand"].notna(), "item_idx"].to_numpy(), 0] > 0).all()
    users = pd.read_parquet(version / "tables" / "users.parquet")
    uview = user_view(version, ViewsConfig())
    assert (uview["cat"][users.loc[users["country"].isna(), "user_idx"].to_numpy(), 0] == 0).all()


def test_a_combined_variation_runs_through_the_flow_like_the_plain_log(tmp_path, prefect_harness, cache_dir):
    """Through the real flow: gzip CSV parts with ISO times and null event types, users as a directory,
    gives the plain log's data version content and the same downstream counts."""
    from seqrec.catalog import DataVersion
    from flows.training import training_flow

    ev, us, it = base_log()
    nulls = ev["event_type"].where(np.arange(len(ev)) % 9 != 0, None)
    iso = pd.to_datetime(ev["timestamp"], unit="s", utc=True).map(lambda t: t.isoformat())
    for k, part in enumerate(_split(ev.assign(timestamp=iso, event_type=nulls), 2)):
        _write(part, tmp_path / "odd" / "events" / f"part-{k}.csv.gz")
    for k, part in enumerate(_split(us, 2)):
        _write(part, tmp_path / "odd" / "users" / f"part-{k}.parquet")
    odd = run_cfg(str(tmp_path / "odd" / "events"), users=str(tmp_path / "odd" / "users"),
                  items=_write(it, tmp_path / "odd" / "items.csv.gz"), data__schema=SCHEMA)
    plain_ev = ev.assign(event_type=nulls.fillna("event"))
    plain = _cfg(_write(plain_ev, tmp_path / "plain" / "events.parquet"), _tables(tmp_path / "plain", us, it))
    outs = {name: training_flow(config=c, workdir=str(tmp_path / name), run_id=name, until="features")
            for name, c in (("odd", odd), ("plain", plain))}
    assert outs["odd"]["status"] == outs["plain"]["status"] == "completed"
    assert outs["odd"]["dataset"] == outs["plain"]["dataset"]
    seqs = [DataVersion(Path(o["data_path"])).sequences().drop(columns=[]) for o in outs.values()]
    pd.testing.assert_frame_equal(*(s.sort_values("user_idx").reset_index(drop=True).astype(str) for s in seqs))


def test_engagement_types_that_occur_nowhere_are_refused(tmp_path, client, cache_dir):
    """views.engage_event_types is compared as the data is normalised; set to types that occur nowhere
    it would give no positives at all, so it is an error naming the types there are."""
    from seqrec.errors import ConfigError
    from tasks.features import ViewsConfig, sequence_view

    ev, us, it = base_log()
    processed(client, tmp_path / "wd", _cfg(_write(ev, tmp_path / "events.parquet"), _tables(tmp_path, us, it)))
    version = next(p for p in (tmp_path / "wd" / "data").iterdir() if p.is_dir() and not p.name.startswith("."))
    labels = sequence_view(version, ViewsConfig(engage_event_types=[" Purchase"]))["engage"]
    assert labels.sum() > 0
    with pytest.raises(ConfigError, match=r"engage_event_types=\['checkout'\] matches none of the events' types: "
                                          r"view, click, cart, purchase"):
        sequence_view(version, ViewsConfig(engage_event_types=["Checkout"]))
