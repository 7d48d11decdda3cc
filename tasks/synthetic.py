"""Synthetic behaviour logs with a learnable, multi-view signal; scales to 1e8 events in chunks.

Signal that each view can pick up:
- item view: each item has 1-3 genres (a primary one), a brand, price, year and a title whose words
  come from genre-specific vocabularies;
- user view: age and country shift the user's genre preference (demographics -> taste);
- sequence view: each item has 3 fixed successors (same primary genre), followed with prob `follow`
  (default 0.45; lower it and the user's taste decides more of the next items);
  sessions, realistic time gaps, popularity skew (Zipf), and event types / values that depend on
  how well the item matches the user's taste (engagement head).
Deterministic per seed: every chunk uses its own RNG stream seeded by (seed, chunk).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from seqrec.fsutil import file_digest, write_json_atomic

GENRES = ["action", "comedy", "drama", "horror", "romance", "scifi", "thriller", "documentary",
          "animation", "fantasy", "crime", "music"]
COUNTRIES = ["us", "uk", "de", "fr", "br", "in", "jp"]
EVENT_TYPES = np.array(["view", "click", "cart", "purchase"])
_COMMON_WORDS = ["the", "of", "night", "day", "story", "return", "last", "first", "city", "road"]
_GENRE_WORDS = {g: [f"{g}{k}" for k in ("core", "wave", "storm", "heart", "quest", "tale")] for g in GENRES}
_GENRE_WORDS.update({
    "action": ["fury", "strike", "bullet", "chase", "force", "battle"],
    "comedy": ["funny", "laugh", "silly", "party", "crazy", "joke"],
    "drama": ["tears", "family", "river", "silence", "promise", "letters"],
    "horror": ["blood", "haunted", "scream", "dead", "curse", "shadow"],
    "romance": ["love", "kiss", "wedding", "heart", "forever", "paris"],
    "scifi": ["galaxy", "robot", "planet", "star", "alien", "quantum"],
})
SUCCESSORS = 3
P_FOLLOW = 0.45
CHUNK_USERS = 50_000
ROW_GROUP = 1_000_000


def _items(n_items: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    g = len(GENRES)
    primary = rng.integers(0, g, n_items)
    extra = rng.integers(0, g, (n_items, 2))
    n_extra = rng.integers(0, 3, n_items)
    genres, titles = [], []
    for i in range(n_items):
        gs = [primary[i]] + [e for e in extra[i, : n_extra[i]] if e != primary[i]]
        gs = list(dict.fromkeys(gs))
        genres.append("|".join(GENRES[k] for k in gs))
        words = rng.choice(_GENRE_WORDS[GENRES[primary[i]]], 2, replace=False).tolist()
        words.insert(int(rng.integers(0, 3)), str(rng.choice(_COMMON_WORDS)))
        titles.append(" ".join(words).title())
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    pop = pop[rng.permutation(n_items)]
    items = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n_items)],
        "title": titles,
        "genres": genres,
        "brand": [f"b{k}" for k in rng.integers(0, max(2, n_items // 25), n_items)],
        "price": np.round(rng.lognormal(3.0, 0.6, n_items), 2),
        "year": rng.integers(1980, 2024, n_items),
    })
    return items, primary, pop


def _successors(primary: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(primary)
    succ = np.empty((n, SUCCESSORS), dtype=np.int64)
    by_genre = {g: np.flatnonzero(primary == g) for g in np.unique(primary)}
    for g, members in by_genre.items():
        picks = rng.choice(members, (len(members), SUCCESSORS)) if len(members) > 1 else np.repeat(members, SUCCESSORS)[None]
        succ[members] = picks
    return succ


def second_order_successors(primary: np.ndarray, seed: int) -> np.ndarray:
    """The fixed successors of the item two events back (`skip`). A stream of its own: drawing them
    from the base stream would change every default log."""
    return _successors(primary, np.random.default_rng([seed, 1_000_000]))


def _users(n_users: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    g = len(GENRES)
    age = rng.integers(16, 75, n_users)
    gender = rng.choice(["f", "m", "x"], n_users, p=[0.48, 0.48, 0.04])
    country = rng.integers(0, len(COUNTRIES), n_users)
    age_band = np.clip((age - 16) // 12, 0, 4)
    # demographics -> taste: a fixed (seeded) preference table per age band and per country
    band_pref = rng.dirichlet(np.full(g, 0.4), 5)
    country_pref = rng.dirichlet(np.full(g, 0.4), len(COUNTRIES))
    personal = rng.dirichlet(np.full(g, 0.3), n_users)
    pref = 0.45 * band_pref[age_band] + 0.25 * country_pref[country] + 0.30 * personal
    users = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n_users)],
        "age": age, "gender": gender, "country": np.array(COUNTRIES)[country],
    })
    return users, pref


def _lengths(n_users: int, n_events: int, rng: np.random.Generator) -> np.ndarray:
    raw = rng.lognormal(0.0, 0.8, n_users)
    lengths = np.maximum(3, np.floor(raw / raw.sum() * n_events)).astype(np.int64)
    diff = n_events - lengths.sum()
    if diff > 0:
        lengths += np.bincount(rng.integers(0, n_users, diff), minlength=n_users)
    while diff < 0:  # too many because of the floor at 3: trim the longest histories
        order = np.argsort(-lengths)[: -diff]
        take = np.minimum(lengths[order] - 1, 1)
        lengths[order] -= take
        diff += int(take.sum())
        if take.sum() == 0:
            break
    return lengths


def _sample_genre_items(genre: np.ndarray, u: np.ndarray, cum: np.ndarray, members: np.ndarray) -> np.ndarray:
    return members[np.searchsorted(cum, genre + u, side="right").clip(0, len(members) - 1)]


def _chunk_events(uids: np.ndarray, lengths: np.ndarray, pref: np.ndarray, primary: np.ndarray,
                  succ: np.ndarray, cum: np.ndarray, members: np.ndarray, rng: np.random.Generator,
                  follow_p: float = P_FOLLOW, skip_p: float = 0.0, succ2: np.ndarray | None = None,
                  start_days: float | None = None) -> pd.DataFrame:
    n = len(uids)
    total = int(lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    out_item = np.empty(total, np.int64)
    out_ts = np.empty(total, np.int64)
    out_match = np.empty(total, np.float32)
    pref_cum = np.cumsum(pref, axis=1)
    if start_days is None:
        t = rng.integers(1_577_836_800, 1_704_067_200, n).astype(np.int64)  # 2020-01-01 .. 2024-01-01
    else:  # only then: default logs keep their random stream
        t = 1_577_836_800 + rng.integers(0, int(start_days * 86_400) + 1, n).astype(np.int64)
    prev = np.full(n, -1, np.int64)
    prev2 = np.full(n, -1, np.int64)  # the item two events back
    for step in range(int(lengths.max())):
        act = np.flatnonzero(lengths > step)
        k = len(act)
        g = (pref_cum[act] < rng.random(k)[:, None]).sum(1).clip(0, pref.shape[1] - 1)
        fresh = _sample_genre_items(g, rng.random(k), cum, members)
        follow = (prev[act] >= 0) & (rng.random(k) < follow_p)
        nxt = np.where(follow, succ[prev[act].clip(0), rng.integers(0, SUCCESSORS, k)], fresh)
        if skip_p > 0:  # only then: default logs keep their random stream
            skip = ~follow & (prev2[act] >= 0) & (rng.random(k) < skip_p / max(1e-9, 1 - follow_p))
            nxt = np.where(skip, succ2[prev2[act].clip(0), rng.integers(0, SUCCESSORS, k)], nxt)
        new_session = rng.random(k) < 0.15
        gap = np.where(new_session, rng.exponential(2 * 86_400, k), rng.exponential(180, k)) + 1
        t[act] += gap.astype(np.int64) * (step > 0)
        pos = offsets[act] + step
        out_item[pos] = nxt
        out_ts[pos] = t[act]
        out_match[pos] = pref[act, primary[nxt]] * pref.shape[1]
        prev2[act] = prev[act]
        prev[act] = nxt
    # engagement depends on taste match: the engagement head has something to learn
    p_buy = np.clip(0.02 + 0.06 * out_match, 0, 0.6)
    r = rng.random(total)
    etype = np.where(r < p_buy, 3, np.where(r < p_buy + 0.10, 2, np.where(r < p_buy + 0.35, 1, 0)))
    value = np.clip(np.round(2.2 + 0.9 * out_match + rng.normal(0, 0.8, total)), 1, 5).astype(np.float32)
    df = pd.DataFrame({
        "user_id": np.char.add("u", np.repeat(uids, lengths).astype(str)),
        "item_id": np.char.add("i", out_item.astype(str)),
        "timestamp": out_ts,
        "event_type": EVENT_TYPES[etype],
        "value": value,
    })
    return df.sort_values("timestamp", kind="stable").reset_index(drop=True)  # logs arrive in time order


def generate(n_users: int, n_items: int, n_events: int, seed: int, out: Path, follow: float = P_FOLLOW,
             skip: float = 0.0, start_days: float | None = None) -> dict:
    """Write out/events/part-*.parquet, out/users.parquet, out/items.parquet and a MANIFEST.json.

    `start_days`: users' first events fall within this many days from 2020-01-01 (default: spread
    over 2020-2024, so users are active at different times and a global time cut-off finds few on
    both sides of it; 0: everyone starts together, as in a log collected over a short period).

    `skip`: probability that the next item is one of the fixed *second-order* successors of the
    item two events back (its own table): a signal a first-order model (Markov) cannot see."""
    if not (0 <= follow and 0 <= skip and follow + skip <= 1):
        raise ValueError(f"synthetic: follow ({follow}) and skip ({skip}) must be probabilities with a sum <= 1")
    out = Path(out)
    (out / "events").mkdir(parents=True, exist_ok=True)
    base = np.random.default_rng([seed, 0])
    items, primary, pop = _items(n_items, base)
    succ = _successors(primary, base)
    succ2 = second_order_successors(primary, seed) if skip else None
    users, pref = _users(n_users, base)
    lengths = _lengths(n_users, n_events, base)
    # per-genre cumulative popularity laid end to end: genre g occupies [g, g+1)
    order = np.lexsort((np.arange(n_items), primary))
    members = order
    cum = np.empty(n_items)
    for g in np.unique(primary):
        sel = primary[order] == g
        w = pop[order][sel]
        cum[sel] = g + np.cumsum(w) / w.sum()
    items.to_parquet(out / "items.parquet", index=False)
    users.to_parquet(out / "users.parquet", index=False)
    n_chunks = (n_users + CHUNK_USERS - 1) // CHUNK_USERS
    for c in range(n_chunks):
        lo, hi = c * CHUNK_USERS, min(n_users, (c + 1) * CHUNK_USERS)
        rng = np.random.default_rng([seed, c + 1])
        df = _chunk_events(np.arange(lo, hi), lengths[lo:hi], pref[lo:hi], primary, succ, cum, members, rng, follow,
                           skip, succ2, start_days)
        table = pa.Table.from_pandas(df, preserve_index=False)
        pq.write_table(table, out / "events" / f"part-{c:05d}.parquet", row_group_size=ROW_GROUP)
    manifest = {
        "generator": "seqrec.synthetic/1", "seed": seed,
        **({"follow": follow} if follow != P_FOLLOW else {}),  # manifests of default logs stay as they were
        **({"skip": skip} if skip else {}),
        **({"start_days": start_days} if start_days is not None else {}),
        "counts": {"users": n_users, "items": n_items, "events": int(lengths.sum())},
        "files": {p.relative_to(out).as_posix(): file_digest(p) for p in sorted(out.rglob("*.parquet"))},
    }
    write_json_atomic(out / "MANIFEST.json", manifest)
    return manifest
