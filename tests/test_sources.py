from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.sources import GROUPLENS_GENRES, AttributeSchema, DataConfig, SynthConfig, fetch_ml100k, read_grouplens_dir, resolve_inputs
from tasks.synthetic import SHAPES, generate


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


@pytest.mark.parametrize("kw", [{}, {"follow": 0.2, "skip": 0.3}, {"start_days": 0}], ids=["default", "follow-skip", "start0"])
def test_settings_of_before_the_shapes_write_the_same_bytes(tmp_path, monkeypatch, kw):
    """Cached logs and benchmarks depend on it: the generator with the settings that existed before
    shapes writes byte for byte what it wrote then (a frozen copy of that generator, below, in the
    same environment: parquet bytes also depend on the pandas/pyarrow versions, so no hard-coded digest)."""
    import tasks.synthetic as syn

    monkeypatch.setattr(syn, "CHUNK_USERS", 130)  # 3 chunks
    m = generate(300, 70, 6_000, 5, tmp_path / "now", **kw)
    old = _generate_before_shapes(300, 70, 6_000, 5, tmp_path / "before", chunk_users=130, **kw)
    assert m == old
    files = sorted(p.relative_to(tmp_path / "now").as_posix() for p in (tmp_path / "now").rglob("*") if p.is_file())
    assert files == ["MANIFEST.json", "events/part-00000.parquet", "events/part-00001.parquet", "events/part-00002.parquet",
                     "items.parquet", "users.parquet"]
    for f in files:
        assert (tmp_path / "now" / f).read_bytes() == (tmp_path / "before" / f).read_bytes(), f
    # and the frozen copy can tell: a changed setting changes the bytes
    generate(300, 70, 6_000, 5, tmp_path / "z", zipf=1.0, **kw)
    assert _digests(tmp_path / "z")["events/part-00000.parquet"] != _digests(tmp_path / "now")["events/part-00000.parquet"]


def _rank_slope(items: pd.Series, lo: int = 5, hi: int = 500) -> float:
    """The slope of log(count) over log(rank) between ranks lo and hi (the Zipf exponent)."""
    c = items.value_counts().to_numpy()
    r = np.arange(1, len(c) + 1)
    sel = (r >= lo) & (r <= hi)
    return -np.polyfit(np.log(r[sel]), np.log(c[sel]), 1)[0]


def test_sparse_longtail_shape(tmp_path):
    """Median events per user as asked, a long tail above it, Zipf popularity with the asked exponent
    and no side information."""
    m = generate(4000, 5000, 40_000, 2, tmp_path / "s", 0.0, zipf=1.1, events_per_user_median=6, side_info=False,
                 new_session=0.3, max_events_per_user=300)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["MANIFEST.json", "events"]
    assert m["counts"]["events"] == 40_000 and list(m["files"]) == ["events/part-00000.parquet"]
    assert (m["zipf"], m["events_per_user_median"], m["side_info"], m["new_session"]) == (1.1, 6, False, 0.3)
    ev = pd.read_parquet(tmp_path / "s" / "events")
    n = ev.groupby("user_id").size()
    assert len(n) == 4000 and n.sum() == 40_000 and n.min() >= 3 and n.max() <= 300
    assert n.median() == 6 and n.mean() == 10  # mean: events / users
    assert (n == 3).mean() < 0.2 and n.quantile(0.9) >= 15 and n.quantile(0.99) >= 50  # spread, not a pile at the minimum
    # popularity: without successors (follow 0) the rank-count slope is the exponent; 0.9 is flatter
    assert 0.95 < _rank_slope(ev["item_id"]) < 1.25
    generate(4000, 5000, 40_000, 2, tmp_path / "z9", 0.0, zipf=0.9, events_per_user_median=6, side_info=False)
    assert _rank_slope(pd.read_parquet(tmp_path / "z9" / "events")["item_id"]) < 0.95
    # the same settings with side information: the same events, plus the tables
    generate(4000, 5000, 40_000, 2, tmp_path / "si", 0.0, zipf=1.1, events_per_user_median=6, new_session=0.3,
             max_events_per_user=300)
    assert _digests(tmp_path / "si")["events/part-00000.parquet"] == _digests(tmp_path / "s")["events/part-00000.parquet"]
    assert (tmp_path / "si" / "users.parquet").is_file() and (tmp_path / "si" / "items.parquet").is_file()
    # default lengths: about 0.73 x the mean, at least 3
    generate(4000, 5000, 40_000, 2, tmp_path / "d", 0.0, side_info=False)
    nd = pd.read_parquet(tmp_path / "d" / "events").groupby("user_id").size()
    assert 6.5 <= nd.median() <= 8 and nd.min() == 3


def test_session_probability_sets_session_length(tmp_path):
    gaps = {}
    for p in (0.15, 0.5):
        generate(200, 100, 8_000, 1, tmp_path / str(p), new_session=p, side_info=False)
        ev = pd.read_parquet(tmp_path / str(p) / "events").sort_values(["user_id", "timestamp"], kind="stable")
        gap = ev.groupby("user_id")["timestamp"].diff().dropna()
        gaps[p] = (gap > 3_600).mean()  # share of events that start a new session
    assert abs(gaps[0.15] - 0.15) < 0.03 and abs(gaps[0.5] - 0.5) < 0.04, gaps


def test_events_per_user_bounds_hold_and_settings_are_checked(tmp_path):
    m = generate(1000, 100, 15_000, 0, tmp_path / "cap", events_per_user_median=6, min_events_per_user=2,
                 max_events_per_user=40, side_info=False)
    n = pd.read_parquet(tmp_path / "cap" / "events").groupby("user_id").size()
    assert m["counts"]["events"] == n.sum() == 15_000 and n.median() == 6
    assert n.min() == 2 and n.max() == 40 and (n == 40).mean() > 0.05  # the cap binds and holds
    with pytest.raises(ValueError, match="above the mean"):  # median 20 > 10000 / 1000
        generate(1000, 100, 10_000, 0, tmp_path / "a", events_per_user_median=20)
    with pytest.raises(ValueError, match="raise max_events_per_user"):  # a mean of 50 with at most 60 and median 6
        generate(1000, 100, 50_000, 0, tmp_path / "b", events_per_user_median=6, max_events_per_user=60)
    with pytest.raises(ValueError, match="do not fit"):
        generate(10, 100, 1_000, 0, tmp_path / "c", max_events_per_user=50)
    with pytest.raises(Exception, match="zipf"):
        SynthConfig(zipf=-1)
    with pytest.raises(Exception, match="above the mean"):  # the shape's median 6, but 2 events per user
        SynthConfig(shape="sparse-longtail", users=1000, events=2000)


def test_shapes_set_the_settings_and_explicit_settings_win():
    sparse = SynthConfig(shape="sparse-longtail")
    assert {k: getattr(sparse, k) for k in SHAPES["sparse-longtail"]} == SHAPES["sparse-longtail"]
    assert sparse.users >= 40_000 and sparse.items >= 50_000 and 5 <= sparse.events_per_user_median <= 10
    assert sparse.zipf > 0.9 and not sparse.side_info and sparse.follow < SynthConfig().follow
    mine = DataConfig.model_validate({"source": "synthetic", "synthetic": {"shape": "sparse-longtail", "zipf": 1.3,
                                                                          "side_info": True}}).synthetic
    assert (mine.zipf, mine.side_info, mine.users) == (1.3, True, 50_000)
    assert SynthConfig.model_validate(mine.model_dump()) == mine  # a dumped config reads back the same
    assert SynthConfig(shape="dense-successors").follow == 0.8
    assert SynthConfig(shape="default") == SynthConfig(shape="default", users=2000) and SynthConfig().shape is None
    # cache directories: settings at their defaults stay out of the name (caches of before keep theirs)
    assert SynthConfig().cache_name() == "u2000-i500-e100000-s0"
    assert SynthConfig(users=300, items=80, events=12_000, seed=7, follow=0.2, skip=0.3, start_days=0).cache_name() == \
        "u300-i80-e12000-s7-f0.2-k0.3-d0"
    assert SynthConfig(shape="sparse-longtail").cache_name() == "u50000-i50000-e500000-s0-f0.2-d180-z1.1-m6-hi500-p0.3-noside"
    assert SynthConfig(shape="dense-successors").cache_name() == SynthConfig(users=2000, items=1000, events=200_000,
                                                                             follow=0.8).cache_name()


def test_synthetic_source_without_side_info_has_no_tables(tmp_path):
    from tasks.validate import validate_raw
    from validation.config import ValidationConfig

    cfg = DataConfig(source="synthetic", cache_dir=str(tmp_path),
                     synthetic={"shape": "sparse-longtail", "users": 400, "items": 600, "events": 4_000, "seed": 3})
    inputs = resolve_inputs(cfg)
    root = tmp_path / "synthetic" / cfg.synthetic.cache_name()
    assert inputs.users is None and inputs.items is None and inputs.schema_ == AttributeSchema()
    assert inputs.events == [str(root / "events" / "part-00000.parquet")]
    assert not (root / "users.parquet").exists() and not (root / "items.parquet").exists()
    assert inputs.entity_table("users") == (None, None) and inputs.entity_table("items") == (None, None)
    assert resolve_inputs(cfg).fingerprint == inputs.fingerprint  # the cached log is used again
    results = validate_raw(inputs, ValidationConfig(), None, tmp_path / "report", now=1_800_000_000)
    assert [(r.table, r.rows, r.success) for r in results] == [("events", 4_000, True)]
    with_side = resolve_inputs(cfg.model_copy(update={"synthetic": cfg.synthetic.model_copy(update={"side_info": True})}))
    assert with_side.users and with_side.items and with_side.schema_.user_categorical


def test_cli_options_reach_the_generator(tmp_path):
    from typer.testing import CliRunner

    from seqrec.cli import app

    run = CliRunner().invoke
    r = run(app, ["data", "synth", "--out", str(tmp_path / "cli"), "--shape", "sparse-longtail", "--users", "300",
                  "--items", "400", "--events", "3000", "--seed", "4", "--zipf", "1.3", "--events-per-user-median", "7",
                  "--new-session", "0.4", "--min-events-per-user", "2", "--max-events-per-user", "100",
                  "--start-days", "10"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "cli" / "MANIFEST.json").read_text())
    assert {k: m.get(k) for k in ("seed", "follow", "zipf", "events_per_user_median", "min_events_per_user",
                                  "max_events_per_user", "new_session", "start_days", "side_info")} == {
        "seed": 4, "follow": 0.2, "zipf": 1.3, "events_per_user_median": 7, "min_events_per_user": 2,
        "max_events_per_user": 100, "new_session": 0.4, "start_days": 10, "side_info": False}
    assert m["counts"] == {"users": 300, "items": 400, "events": 3000}
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["MANIFEST.json", "events"]
    # the same settings through the config: the same files
    cfg = SynthConfig(shape="sparse-longtail", users=300, items=400, events=3000, seed=4, zipf=1.3,
                      events_per_user_median=7, new_session=0.4, min_events_per_user=2, max_events_per_user=100,
                      start_days=10)
    generate(cfg.users, cfg.items, cfg.events, cfg.seed, tmp_path / "cfg", **cfg.generator_kwargs())
    assert _digests(tmp_path / "cfg") == _digests(tmp_path / "cli")
    # dense shape with strong successors, from the command line; skip and --side-info too
    r = run(app, ["data", "synth", "--out", str(tmp_path / "dense"), "--shape", "dense-successors", "--users", "300",
                  "--items", "60", "--events", "12000", "--skip", "0.1", "--side-info"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "dense" / "MANIFEST.json").read_text())
    assert (m["follow"], m["skip"], "side_info" in m) == (0.8, 0.1, False)
    assert (tmp_path / "dense" / "users.parquet").is_file()
    assert _top3_successor_share(tmp_path / "dense") > 0.75
    r = run(app, ["data", "synth", "--out", str(tmp_path / "plain"), "--users", "300", "--items", "60", "--events", "12000",
                  "--follow", "0.9", "--no-side-info"])
    m = json.loads((tmp_path / "plain" / "MANIFEST.json").read_text())
    assert r.exit_code == 0 and (m["follow"], m["side_info"]) == (0.9, False)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["MANIFEST.json", "events"]
    # without options: the defaults (and the bytes of generate's defaults)
    r = run(app, ["data", "synth", "--out", str(tmp_path / "def"), "--users", "100", "--items", "30", "--events", "2000"])
    generate(100, 30, 2000, 0, tmp_path / "def2")
    assert r.exit_code == 0 and _digests(tmp_path / "def") == _digests(tmp_path / "def2")
    r = run(app, ["data", "synth", "--out", str(tmp_path / "bad"), "--shape", "sparse-longtail", "--events", "1000"])
    assert r.exit_code == 2 and "above the mean" in r.output
    r = run(app, ["data", "synth", "--out", str(tmp_path / "bad"), "--shape", "nope"])
    assert r.exit_code == 2 and "sparse-longtail" in r.output


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


# --------------------------------------------------------------------------- the generator before shapes
# A frozen copy of tasks/synthetic.py's generator as of commit a688a46 (before zipf, events per user,
# sessions and side information were settings): test_settings_of_before_the_shapes_write_the_same_bytes
# compares the generator with it. Do not "fix" it: it is the reference.

_O_GENRES = ["action", "comedy", "drama", "horror", "romance", "scifi", "thriller", "documentary",
             "animation", "fantasy", "crime", "music"]
_O_COUNTRIES = ["us", "uk", "de", "fr", "br", "in", "jp"]
_O_EVENT_TYPES = np.array(["view", "click", "cart", "purchase"])
_O_COMMON = ["the", "of", "night", "day", "story", "return", "last", "first", "city", "road"]
_O_WORDS = {g: [f"{g}{k}" for k in ("core", "wave", "storm", "heart", "quest", "tale")] for g in _O_GENRES}
_O_WORDS.update({
    "action": ["fury", "strike", "bullet", "chase", "force", "battle"],
    "comedy": ["funny", "laugh", "silly", "party", "crazy", "joke"],
    "drama": ["tears", "family", "river", "silence", "promise", "letters"],
    "horror": ["blood", "haunted", "scream", "dead", "curse", "shadow"],
    "romance": ["love", "kiss", "wedding", "heart", "forever", "paris"],
    "scifi": ["galaxy", "robot", "planet", "star", "alien", "quantum"],
})


def _o_items(n_items, rng):
    g = len(_O_GENRES)
    primary = rng.integers(0, g, n_items)
    extra = rng.integers(0, g, (n_items, 2))
    n_extra = rng.integers(0, 3, n_items)
    genres, titles = [], []
    for i in range(n_items):
        gs = list(dict.fromkeys([primary[i]] + [e for e in extra[i, : n_extra[i]] if e != primary[i]]))
        genres.append("|".join(_O_GENRES[k] for k in gs))
        words = rng.choice(_O_WORDS[_O_GENRES[primary[i]]], 2, replace=False).tolist()
        words.insert(int(rng.integers(0, 3)), str(rng.choice(_O_COMMON)))
        titles.append(" ".join(words).title())
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    pop = pop[rng.permutation(n_items)]
    items = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n_items)], "title": titles, "genres": genres,
        "brand": [f"b{k}" for k in rng.integers(0, max(2, n_items // 25), n_items)],
        "price": np.round(rng.lognormal(3.0, 0.6, n_items), 2), "year": rng.integers(1980, 2024, n_items),
    })
    return items, primary, pop


def _o_successors(primary, rng):
    succ = np.empty((len(primary), 3), dtype=np.int64)
    for g in np.unique(primary):
        members = np.flatnonzero(primary == g)
        succ[members] = rng.choice(members, (len(members), 3)) if len(members) > 1 else np.repeat(members, 3)[None]
    return succ


def _o_users(n_users, rng):
    g = len(_O_GENRES)
    age = rng.integers(16, 75, n_users)
    gender = rng.choice(["f", "m", "x"], n_users, p=[0.48, 0.48, 0.04])
    country = rng.integers(0, len(_O_COUNTRIES), n_users)
    age_band = np.clip((age - 16) // 12, 0, 4)
    band_pref = rng.dirichlet(np.full(g, 0.4), 5)
    country_pref = rng.dirichlet(np.full(g, 0.4), len(_O_COUNTRIES))
    personal = rng.dirichlet(np.full(g, 0.3), n_users)
    pref = 0.45 * band_pref[age_band] + 0.25 * country_pref[country] + 0.30 * personal
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n_users)], "age": age, "gender": gender,
                          "country": np.array(_O_COUNTRIES)[country]})
    return users, pref


def _o_lengths(n_users, n_events, rng):
    raw = rng.lognormal(0.0, 0.8, n_users)
    lengths = np.maximum(3, np.floor(raw / raw.sum() * n_events)).astype(np.int64)
    diff = n_events - lengths.sum()
    if diff > 0:
        lengths += np.bincount(rng.integers(0, n_users, diff), minlength=n_users)
    while diff < 0:
        order = np.argsort(-lengths)[: -diff]
        take = np.minimum(lengths[order] - 1, 1)
        lengths[order] -= take
        diff += int(take.sum())
        if take.sum() == 0:
            break
    return lengths


def _o_chunk(uids, lengths, pref, primary, succ, cum, members, rng, follow_p, skip_p, succ2, start_days):
    n, total = len(uids), int(lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    out_item, out_ts, out_match = np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total, np.float32)
    pref_cum = np.cumsum(pref, axis=1)
    if start_days is None:
        t = rng.integers(1_577_836_800, 1_704_067_200, n).astype(np.int64)
    else:
        t = 1_577_836_800 + rng.integers(0, int(start_days * 86_400) + 1, n).astype(np.int64)
    prev, prev2 = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    for step in range(int(lengths.max())):
        act = np.flatnonzero(lengths > step)
        k = len(act)
        g = (pref_cum[act] < rng.random(k)[:, None]).sum(1).clip(0, pref.shape[1] - 1)
        fresh = members[np.searchsorted(cum, g + rng.random(k), side="right").clip(0, len(members) - 1)]
        follow = (prev[act] >= 0) & (rng.random(k) < follow_p)
        nxt = np.where(follow, succ[prev[act].clip(0), rng.integers(0, 3, k)], fresh)
        if skip_p > 0:
            skip = ~follow & (prev2[act] >= 0) & (rng.random(k) < skip_p / max(1e-9, 1 - follow_p))
            nxt = np.where(skip, succ2[prev2[act].clip(0), rng.integers(0, 3, k)], nxt)
        new_session = rng.random(k) < 0.15
        gap = np.where(new_session, rng.exponential(2 * 86_400, k), rng.exponential(180, k)) + 1
        t[act] += gap.astype(np.int64) * (step > 0)
        pos = offsets[act] + step
        out_item[pos], out_ts[pos], out_match[pos] = nxt, t[act], pref[act, primary[nxt]] * pref.shape[1]
        prev2[act] = prev[act]
        prev[act] = nxt
    p_buy = np.clip(0.02 + 0.06 * out_match, 0, 0.6)
    r = rng.random(total)
    etype = np.where(r < p_buy, 3, np.where(r < p_buy + 0.10, 2, np.where(r < p_buy + 0.35, 1, 0)))
    value = np.clip(np.round(2.2 + 0.9 * out_match + rng.normal(0, 0.8, total)), 1, 5).astype(np.float32)
    df = pd.DataFrame({"user_id": np.char.add("u", np.repeat(uids, lengths).astype(str)),
                       "item_id": np.char.add("i", out_item.astype(str)), "timestamp": out_ts,
                       "event_type": _O_EVENT_TYPES[etype], "value": value})
    return df.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _generate_before_shapes(n_users, n_items, n_events, seed, out, follow=0.45, skip=0.0, start_days=None,
                            chunk_users=50_000):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from seqrec.fsutil import file_digest, write_json_atomic

    (out / "events").mkdir(parents=True, exist_ok=True)
    base = np.random.default_rng([seed, 0])
    items, primary, pop = _o_items(n_items, base)
    succ = _o_successors(primary, base)
    succ2 = _o_successors(primary, np.random.default_rng([seed, 1_000_000])) if skip else None
    users, pref = _o_users(n_users, base)
    lengths = _o_lengths(n_users, n_events, base)
    order = np.lexsort((np.arange(n_items), primary))
    cum = np.empty(n_items)
    for g in np.unique(primary):
        sel = primary[order] == g
        w = pop[order][sel]
        cum[sel] = g + np.cumsum(w) / w.sum()
    items.to_parquet(out / "items.parquet", index=False)
    users.to_parquet(out / "users.parquet", index=False)
    for c in range((n_users + chunk_users - 1) // chunk_users):
        lo, hi = c * chunk_users, min(n_users, (c + 1) * chunk_users)
        df = _o_chunk(np.arange(lo, hi), lengths[lo:hi], pref[lo:hi], primary, succ, cum, order,
                      np.random.default_rng([seed, c + 1]), follow, skip, succ2, start_days)
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), out / "events" / f"part-{c:05d}.parquet",
                       row_group_size=1_000_000)
    manifest = {
        "generator": "seqrec.synthetic/1", "seed": seed,
        **({"follow": follow} if follow != 0.45 else {}), **({"skip": skip} if skip else {}),
        **({"start_days": start_days} if start_days is not None else {}),
        "counts": {"users": n_users, "items": n_items, "events": int(lengths.sum())},
        "files": {p.relative_to(out).as_posix(): file_digest(p) for p in sorted(out.rglob("*.parquet"))},
    }
    write_json_atomic(out / "MANIFEST.json", manifest)
    return manifest
