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

Shapes to benchmark (`SHAPES`, `seqrec data synth --shape`, `data.synthetic.shape`; explicit
settings win over the shape's):
- `default`: the generator's defaults (their output is byte-identical to the logs of before shapes);
- `sparse-longtail`: like an e-commerce log: many users and items, a median of 6 events per user
  with a long tail (capped at 500), heavier Zipf popularity (1.1), short sessions, a weak successor
  signal (follow 0.2) and no user or item side information (no users.parquet / items.parquet);
- `dense-successors`: fewer items, 100 events per user, strong fixed successors (follow 0.8).
Without side information the events are those of the same settings with it: users' tastes and
items' genres still drive them, they are just not written.
"""

from __future__ import annotations

import math
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
ZIPF = 0.9  # exponent of item popularity: 1 / rank ** ZIPF
NEW_SESSION = 0.15  # probability that an event starts a new session (gap ~2 days, not ~3 minutes)
MIN_EVENTS = 3  # events per user, at least
CHUNK_USERS = 50_000
ROW_GROUP = 1_000_000
# benchmark shapes: settings named as in tasks.sources.SynthConfig (explicit settings override them)
SHAPES: dict[str, dict] = {
    "default": {},
    "sparse-longtail": {"users": 50_000, "items": 50_000, "events": 500_000, "zipf": 1.1,
                        "events_per_user_median": 6.0, "max_events_per_user": 500, "follow": 0.2,
                        "new_session": 0.3, "start_days": 180.0, "side_info": False},
    "dense-successors": {"users": 2_000, "items": 1_000, "events": 200_000, "follow": 0.8},
}


def _items(n_items: int, rng: np.random.Generator, zipf: float = ZIPF) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
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
    pop = 1.0 / np.arange(1, n_items + 1) ** zipf
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


def _mean_length(median: float, sigma: float, lo: int, hi: int | None) -> float:
    """E[lo + min(Y, hi - lo)] for Y lognormal with median `median - lo` and this sigma (closed form)."""
    cap = math.inf if hi is None else hi - lo
    if sigma <= 0:
        return lo + min(median - lo, cap)
    mu = math.log(median - lo)

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    z = (math.log(cap) - mu) / sigma if cap < math.inf else math.inf
    return lo + math.exp(mu + sigma**2 / 2) * cdf(z - sigma) + (cap * (1 - cdf(z)) if cap < math.inf else 0.0)


def length_sigma(mean: float, median: float, lo: int = MIN_EVENTS, hi: int | None = None) -> float:
    """The spread (lognormal sigma) of events per user above `lo` that gives this median and this
    mean (events / users) once lengths are capped at `hi`."""
    if not lo < median <= (math.inf if hi is None else hi):
        raise ValueError(f"synthetic: events_per_user_median ({median:g}) must be above the minimum ({lo}) "
                         f"and at most the maximum ({hi if hi else 'none'}) events per user")
    if mean < median:
        raise ValueError(f"synthetic: events_per_user_median ({median:g}) is above the mean events per user "
                         f"(events / users = {mean:g}): a long tail has its mean above its median; raise events "
                         f"or lower users or the median")
    grid = np.arange(0, 8.001, 0.01)
    above = np.flatnonzero([_mean_length(median, s, lo, hi) >= mean for s in grid])
    if not len(above):
        raise ValueError(f"synthetic: with a median of {median:g} events per user and at most {hi} no spread "
                         f"reaches the mean events / users = {mean:g}; raise max_events_per_user")
    k = int(above[0])
    if k == 0:
        return 0.0
    a, b = float(grid[k - 1]), float(grid[k])
    for _ in range(40):
        m = (a + b) / 2
        a, b = (m, b) if _mean_length(median, m, lo, hi) < mean else (a, m)
    return b


def _lengths(n_users: int, n_events: int, rng: np.random.Generator, median: float | None = None,
             lo: int = MIN_EVENTS, hi: int | None = None) -> np.ndarray:
    """Events per user. Default: lognormal (sigma 0.8) scaled to `n_events` (median about 0.73 x
    the mean; at least `lo`, so many users have exactly `lo`). With `median`: `lo` + a lognormal
    with the median `median - lo` and the spread that makes the mean n_events / n_users (a long
    tail, no pile at `lo`). At most `hi`; the total is made exact by adding events to random users
    (below hi) or taking them from the longest histories."""
    if median is None:
        raw = rng.lognormal(0.0, 0.8, n_users)
        lengths = np.maximum(lo, np.floor(raw / raw.sum() * n_events)).astype(np.int64)
    else:
        raw = rng.lognormal(0.0, length_sigma(n_events / n_users, median, lo, hi), n_users)
        lengths = lo + np.rint((median - lo) * raw).astype(np.int64)
    if hi is not None:
        lengths = np.minimum(lengths, hi)
    diff = n_events - lengths.sum()
    if diff > 0 and hi is None:
        lengths += np.bincount(rng.integers(0, n_users, diff), minlength=n_users)
    while diff > 0 and hi is not None:  # only users below the cap take more (generate checks there is room)
        room = np.flatnonzero(lengths < hi)
        add = np.bincount(rng.integers(0, len(room), diff), minlength=len(room))
        lengths[room] = np.minimum(hi, lengths[room] + add)
        diff = n_events - lengths.sum()
    while diff < 0:  # too many because of the floor at lo: trim the longest histories
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
                  start_days: float | None = None, session_p: float = NEW_SESSION) -> pd.DataFrame:
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
        new_session = rng.random(k) < session_p
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


def check(n_users: int, n_events: int, follow: float = P_FOLLOW, skip: float = 0.0, zipf: float = ZIPF,
          events_per_user_median: float | None = None, min_events_per_user: int = MIN_EVENTS,
          max_events_per_user: int | None = None, new_session: float = NEW_SESSION) -> None:
    """Raise ValueError on settings that cannot be generated (also what the config checks)."""
    if not (0 <= follow and 0 <= skip and follow + skip <= 1):
        raise ValueError(f"synthetic: follow ({follow}) and skip ({skip}) must be probabilities with a sum <= 1")
    if not zipf >= 0:
        raise ValueError(f"synthetic: zipf ({zipf}) must be >= 0 (0: all items equally popular)")
    if not 0 <= new_session <= 1:
        raise ValueError(f"synthetic: new_session ({new_session}) must be a probability")
    lo, hi = min_events_per_user, max_events_per_user
    if lo < 1 or (hi is not None and hi < lo):
        raise ValueError(f"synthetic: events per user must be within 1 <= min ({lo}) <= max ({hi})")
    if hi is not None and n_events > n_users * hi:
        raise ValueError(f"synthetic: {n_events} events do not fit {n_users} users with at most {hi} events each")
    if events_per_user_median is not None:
        length_sigma(n_events / n_users, events_per_user_median, lo, hi)


def generate(n_users: int, n_items: int, n_events: int, seed: int, out: Path, follow: float = P_FOLLOW,
             skip: float = 0.0, start_days: float | None = None, *, zipf: float = ZIPF,
             events_per_user_median: float | None = None, min_events_per_user: int = MIN_EVENTS,
             max_events_per_user: int | None = None, new_session: float = NEW_SESSION,
             side_info: bool = True) -> dict:
    """Write out/events/part-*.parquet, out/users.parquet, out/items.parquet and a MANIFEST.json.

    `start_days`: users' first events fall within this many days from 2020-01-01 (default: spread
    over 2020-2024, so users are active at different times and a global time cut-off finds few on
    both sides of it; 0: everyone starts together, as in a log collected over a short period).

    `skip`: probability that the next item is one of the fixed *second-order* successors of the
    item two events back (its own table): a signal a first-order model (Markov) cannot see.

    `zipf`: exponent of item popularity (1 / rank ** zipf; a higher one: a heavier head, a longer
    tail of rarely seen items). It is the slope of the log's rank-count curve when no event follows a
    successor (follow = skip = 0); successors, drawn uniformly within a genre, flatten it (at follow 0.2
    about 0.88 x zipf, at 0.8 about 0.6 x). `events_per_user_median`: the median history length (default:
    about 0.73 x events / users); the spread then follows from the mean events / users.
    `min_events_per_user` / `max_events_per_user`: bounds of a history's length. `new_session`:
    probability that an event starts a new session. `side_info=False`: no users.parquet and no
    items.parquet (the events stay those of the same settings with side information).
    Settings at their defaults leave the output byte-identical to that of the generator before them."""
    check(n_users, n_events, follow, skip, zipf, events_per_user_median, min_events_per_user, max_events_per_user,
          new_session)
    out = Path(out)
    (out / "events").mkdir(parents=True, exist_ok=True)
    base = np.random.default_rng([seed, 0])
    items, primary, pop = _items(n_items, base, zipf)
    succ = _successors(primary, base)
    succ2 = second_order_successors(primary, seed) if skip else None
    users, pref = _users(n_users, base)
    lengths = _lengths(n_users, n_events, base, events_per_user_median, min_events_per_user, max_events_per_user)
    # per-genre cumulative popularity laid end to end: genre g occupies [g, g+1)
    order = np.lexsort((np.arange(n_items), primary))
    members = order
    cum = np.empty(n_items)
    for g in np.unique(primary):
        sel = primary[order] == g
        w = pop[order][sel]
        cum[sel] = g + np.cumsum(w) / w.sum()
    if side_info:
        items.to_parquet(out / "items.parquet", index=False)
        users.to_parquet(out / "users.parquet", index=False)
    del items, users
    n_chunks = (n_users + CHUNK_USERS - 1) // CHUNK_USERS
    for c in range(n_chunks):
        lo, hi = c * CHUNK_USERS, min(n_users, (c + 1) * CHUNK_USERS)
        rng = np.random.default_rng([seed, c + 1])
        df = _chunk_events(np.arange(lo, hi), lengths[lo:hi], pref[lo:hi], primary, succ, cum, members, rng, follow,
                           skip, succ2, start_days, new_session)
        table = pa.Table.from_pandas(df, preserve_index=False)
        pq.write_table(table, out / "events" / f"part-{c:05d}.parquet", row_group_size=ROW_GROUP)
    # settings at their defaults are left out: manifests of default logs stay as they were
    extra = {"zipf": zipf, "events_per_user_median": events_per_user_median,
             "min_events_per_user": min_events_per_user, "max_events_per_user": max_events_per_user,
             "new_session": new_session, "side_info": side_info}
    defaults = {"zipf": ZIPF, "events_per_user_median": None, "min_events_per_user": MIN_EVENTS,
                "max_events_per_user": None, "new_session": NEW_SESSION, "side_info": True}
    manifest = {
        "generator": "seqrec.synthetic/1", "seed": seed,
        **({"follow": follow} if follow != P_FOLLOW else {}),
        **({"skip": skip} if skip else {}),
        **({"start_days": start_days} if start_days is not None else {}),
        **{k: v for k, v in extra.items() if v != defaults[k]},
        "counts": {"users": n_users, "items": n_items, "events": int(lengths.sum())},
        "files": {p.relative_to(out).as_posix(): file_digest(p) for p in sorted(out.rglob("*.parquet"))},
    }
    write_json_atomic(out / "MANIFEST.json", manifest)
    return manifest
