"""`seqrec data inspect`: the roles, units and profile it reports are right, the config it proposes
reads the files through the real data stages, and it writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tests.test_inputs import client, processed  # noqa: F401 - the module's Dask client fixture


def shop_log(tmp) -> tuple[pd.DataFrame, str, str]:
    """A shop's export: its own column names, millisecond times, other event names, nulls, gzip; an
    items table keyed by the shop's product column."""
    rng = np.random.default_rng(1)
    n = 600
    ev = pd.DataFrame({"visitorId": rng.integers(0, 60, n), "productId": rng.integers(0, 30, n),
                       "event_time": 1_700_000_000_000 + np.sort(rng.integers(0, 10**9, n)),
                       "Action": rng.choice(["View", "AddToCart", "Transaction", None], n)})
    ev.to_csv(tmp / "shop.csv.gz", index=False)
    items = pd.DataFrame({"productId": range(30), "brand": rng.choice(["a", "b"], 30),
                          "name": [f"nice thing {i}" for i in range(30)], "price": rng.random(30)})
    items.to_parquet(tmp / "products.parquet")
    return ev, str(tmp / "shop.csv.gz"), str(tmp / "products.parquet")


def test_inspect_reports_what_the_pipeline_would_see(tmp_path):
    from tasks.inspect import inspect

    ev, events, items = shop_log(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rep = inspect(events, items=items)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "inspect wrote something"
    assert rep.roles == {"user_id": "visitorId", "item_id": "productId", "timestamp": "event_time",
                         "event_type": "Action"}
    p = rep.profile
    assert p is not None and p.timestamp_kind == "integer" and p.timestamp_unit == "ms"
    assert (p.events, p.users, p.items) == (len(ev), ev["visitorId"].nunique(), ev["productId"].nunique())
    assert p.null_event_types == int(ev["Action"].isna().sum())
    assert p.event_types["addtocart"] == int((ev["Action"] == "AddToCart").sum())
    first = pd.Timestamp(int(ev["event_time"].min()) // 1000, unit="s", tz="UTC").isoformat()
    assert p.time_min_utc == first
    ordered = ev.assign(t=ev["event_time"]).sort_values(["visitorId", "t"], kind="stable")
    assert abs(p.repeat_rate - ordered.duplicated(["visitorId", "productId"]).mean()) < 1e-12
    nulls = {c.name: c.null_fraction for c in rep.tables[0].columns}
    assert abs(nulls["Action"] - ev["Action"].isna().mean()) < 1e-12
    data = rep.config["data"]
    assert data["timestamp_unit"] == "ms" and data["columns"]["item_id"] == "productId"
    assert data["schema"] == {"item_categorical": ["brand"], "item_text": ["name"], "item_numeric": ["price"]}
    assert {"addtocart", "transaction"} <= set(rep.config["validation"]["allowed_event_types"])


def test_the_proposed_config_reads_the_files(tmp_path, client):  # noqa: F811
    from flows.config import validate_config
    from tasks.inspect import inspect

    ev, events, items = shop_log(tmp_path)
    cfg = validate_config({**inspect(events, items=items).config,
                           "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2}})
    seq, counts, tables = processed(client, tmp_path / "wd", cfg)
    assert counts["events"] == len(ev) and counts["users"] == ev["visitorId"].nunique()
    assert tables["items"]["brand"].notna().all() and len(tables["items"]) == ev["productId"].nunique()


def test_inspect_command_prints_json_and_names_unreadable_files(tmp_path):
    from typer.testing import CliRunner

    from seqrec.cli import app

    _, events, _ = shop_log(tmp_path)
    res = CliRunner().invoke(app, ["data", "inspect", "--events", events, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["roles"]["timestamp"] == "event_time"
    (tmp_path / "broken.csv.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    res = CliRunner().invoke(app, ["data", "inspect", "--events", str(tmp_path / "broken.csv.gz")])
    assert res.exit_code == 2 and "broken.csv.gz" in res.output and "well-formed CSV" in res.output
