from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.sources import GROUPLENS_GENRES, fetch_ml100k, read_grouplens_dir
from tasks.synthetic import generate


def _digests(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*.parquet"))}


def test_synthetic_is_deterministic_and_chunked(tmp_path, monkeypatch):
    import tasks.synthetic as syn

    monkeypatch.setattr(syn, "CHUNK_USERS", 70)
    a = generate(200, 50, 5000, 3, tmp_path / "a")
    generate(200, 50, 5000, 3, tmp_path / "b")
    generate(200, 50, 5000, 4, tmp_path / "c")
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b") != _digests(tmp_path / "c")
    assert a["counts"]["events"] == 5000 and len(list((tmp_path / "a" / "events").glob("*.parquet"))) == 3
    ev = pd.read_parquet(tmp_path / "a" / "events")
    assert set(ev["event_type"]) <= {"view", "click", "cart", "purchase"}
    assert ev.groupby("user_id").size().min() >= 3


def _top3_successor_share(d: Path) -> float:
    ev = pd.read_parquet(d / "events").sort_values(["user_id", "timestamp"], kind="stable")
    prev = ev.groupby("user_id")["item_id"].shift()
    pairs = pd.DataFrame({"p": prev, "n": ev["item_id"]}).dropna()
    return pairs.groupby("p")["n"].agg(lambda s: s.value_counts(normalize=True).iloc[:3].sum()).mean()


def test_synthetic_has_sequential_and_profile_signal(tmp_path):
    generate(400, 60, 20_000, 1, tmp_path)
    ev = pd.read_parquet(tmp_path / "events").sort_values(["user_id", "timestamp"], kind="stable")
    assert _top3_successor_share(tmp_path) > 0.35  # 3 successors followed ~45% of the time; uniform would be ~5%
    users = pd.read_parquet(tmp_path / "users.parquet")
    items = pd.read_parquet(tmp_path / "items.parquet")
    merged = ev.merge(users, on="user_id").merge(items, on="item_id")
    merged["g0"] = merged["genres"].str.split("|").str[0]
    band = pd.cut(merged["age"], [0, 28, 40, 52, 64, 99])
    dist = pd.crosstab(band, merged["g0"], normalize="index")
    assert (dist.max() - dist.min()).max() > 0.05  # age shifts genre taste


def _top3_share(d: Path, lag: int) -> float:
    ev = pd.read_parquet(d / "events").sort_values(["user_id", "timestamp"], kind="stable")
    back = ev.groupby("user_id")["item_id"].shift(lag)
    pairs = pd.DataFrame({"p": back, "n": ev["item_id"]}).dropna()
    return pairs.groupby("p")["n"].agg(lambda s: s.value_counts(normalize=True).iloc[:3].sum()).mean()


def test_synthetic_skip_adds_a_second_order_signal(tmp_path):
    generate(300, 60, 12_000, 1, tmp_path / "k0", follow=0.3)
    m = generate(300, 60, 12_000, 1, tmp_path / "k4", follow=0.3, skip=0.4)
    assert m["skip"] == 0.4
    # the item two events back predicts the next one only with skip (its own successor table)
    assert _top3_share(tmp_path / "k4", 2) > _top3_share(tmp_path / "k0", 2) + 0.1
    with pytest.raises(ValueError, match="sum <= 1"):
        generate(10, 10, 100, 1, tmp_path / "bad", follow=0.7, skip=0.4)


def test_synthetic_follow_probability_sets_the_sequence_signal(tmp_path):
    shares = {}
    for follow in (0.0, 0.45, 0.9):
        m = generate(300, 60, 12_000, 1, tmp_path / str(follow), follow=follow)
        assert m.get("follow", 0.45) == follow  # recorded (default logs keep their old manifest)
        shares[follow] = _top3_successor_share(tmp_path / str(follow))
    assert shares[0.0] < 0.3 < shares[0.45] < shares[0.9], shares
    assert _digests(tmp_path / "0.45") != _digests(tmp_path / "0.9")


def test_fetch_ml100k_and_read_grouplens_layout(cache_dir, tmp_path):
    root = fetch_ml100k(cache_dir)
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert manifest["counts"] == {"events": 100000, "users": 943, "items": 1682}
    ev, users, items = (pd.read_parquet(root / f"{n}.parquet") for n in ("events", "users", "items"))
    # write the original GroupLens layout from it and read that back: the two paths agree
    gl = tmp_path / "ml-100k"
    gl.mkdir()
    ev[["user_id", "item_id", "value", "timestamp"]].assign(value=ev["value"].astype(int)).to_csv(
        gl / "u.data", sep="\t", header=False, index=False)
    users[["user_id", "age", "gender", "occupation", "zip_code"]].to_csv(gl / "u.user", sep="|", header=False, index=False)
    flags = np.array([[int(g in str(s).split("|")) for g in GROUPLENS_GENRES] for s in items["genres"]])
    year = items["year"].astype("Int64").astype(str).replace("<NA>", "")
    release = np.where(year == "", "", "01-Jan-" + year)
    rows = [f"{i}|{t} ({y})|{r}||http://x|" + "|".join(map(str, f))
            for i, t, y, r, f in zip(items["item_id"], items["title"], year, release, flags)]
    (gl / "u.item").write_text("\n".join(rows) + "\n", encoding="latin-1")
    ev2, users2, items2 = read_grouplens_dir(gl)
    pd.testing.assert_frame_equal(ev2.reset_index(drop=True), ev.reset_index(drop=True), check_dtype=False)
    assert users2["age"].tolist() == users["age"].tolist()
    assert items2["genres"].tolist() == items["genres"].tolist()
    with pytest.raises(Exception, match="u.data"):
        read_grouplens_dir(tmp_path / "empty")
