"""A self-contained model bundle and the scorer that serves it.

The bundle is one directory with everything needed to recommend without the training work
directory: weights, model config, the item/user view tables, the id vocabularies, each known user's
full history (train + validation + test events: recommendations are for the future), and the
encoding rules (event types, gap-bucket edges). The MLflow pyfunc ships it as an artifact, and the
A/B step re-scores an old champion from it on today's data.

A *baseline* bundle (`bundle.json` kind "baseline": models/baselines.py's Markov or Pop) has the same
vocabularies, histories and encoding rules but no network: the baseline is rebuilt at load time from
each user's training events (the first `train_events` of the stored history), exactly as the
evaluation built it, and `Scorer` serves and re-scores it through the same id mapping, seen-item
mask and top-k. A first run whose network loses the A/B against the baseline registers one, so
there is always a servable champion (tasks/registry.py, `baseline_champion`).

Imports stay light (numpy, pandas, torch, pydantic, models/): the pyfunc loads this module in a
serving environment without Dask, Prefect or Great Expectations.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.baselines import Markov, Popularity
from models.data import history_prefixes, left_pad
from models.net import ItemTables, ModelConfig, SeqRecNet, TransitionTables, UserTables
from seqrec.catalog import VIEW_FILES, DataVersion, Views
from seqrec.encoding import ITEM_FIRST, ITEM_UNKNOWN, USER_UNKNOWN, gap_buckets_of
from seqrec.errors import SeqrecError

BUNDLE_FORMAT = 1
ITEM_INFO = "item_info.parquet"  # item side information by item_idx; bundles from before it have none
MULTI_SEP = "|"


def load_net(views: Path, mcfg: ModelConfig, n_items: int, n_users: int) -> SeqRecNet:
    """The network with its item/user view tables, from a views directory (seqrec.catalog.Views)."""
    v = Views(views)
    vm = v.meta
    ia = v.item_arrays()
    ua = v.user_arrays()
    t = torch.as_tensor
    items = ItemTables(cat=t(ia["cat"]), cat_sizes=vm["item"]["cat_sizes"], multi=t(ia["multi"]),
                       multi_size=vm["item"]["multi_size"], num=t(ia["num"]), num_size=vm["item"]["num_size"],
                       pop=t(ia["pop"]), pop_size=vm["item"]["pop_size"],
                       text=t(v.item_text()), attr_target=t(ia["attr_target"]))
    users = UserTables(cat=t(ua["cat"]), cat_sizes=vm["user"]["cat_sizes"], num=t(ua["num"]),
                       num_size=vm["user"]["num_size"], dense=t(ua["dense"]))
    return SeqRecNet(mcfg, n_items, vm["sequence"]["n_event_types"], vm["sequence"]["n_gap_buckets"], items, users,
                     n_users, load_transitions(views))


def load_transitions(views: Path) -> TransitionTables | None:
    """The views' transition tables (None in views written before them: such bundles were trained
    without the transition prior, PRE_EXISTING_DEFAULTS)."""
    z = Views(views).transitions()
    if z is None:
        return None
    lags = sorted(int(k[3:].split("_")[0]) for k in z.files if k.endswith("_indptr"))
    if not lags:
        return None
    t = torch.as_tensor
    return TransitionTables([t(z[f"lag{k}_indptr"]) for k in lags], [t(z[f"lag{k}_indices"]) for k in lags],
                            [t(z[f"lag{k}_counts"]) for k in lags])


def bundle_model_config(raw: dict) -> ModelConfig:
    """A bundle's model config. Keys added to ModelConfig later default to what a bundle written
    before them was trained as (a registered champion must keep loading and scoring as it did)."""
    return ModelConfig.model_validate({**PRE_EXISTING_DEFAULTS, **raw})


# ModelConfig keys newer than the bundle format, with the behaviour of the code before them
PRE_EXISTING_DEFAULTS = {"repeat_bias": False, "transition_lags": 0, "user_history": False}


BASELINES = {"pop": Popularity, "markov": Markov}
NETWORK, BASELINE = "network", "baseline"


def write_bundle(out: Path, data_path: Path, views: Path, mcfg: ModelConfig, weights: Path,
                 exclude_seen: bool) -> Path:
    """Write the bundle directory `out` (must not exist) from a data version, its views and weights."""
    dv, views, out = DataVersion(data_path), Path(views), Path(out)
    out.mkdir(parents=True)
    (out / "views").mkdir()
    for name in VIEW_FILES:
        shutil.copy2(views / name, out / "views" / name)
    shutil.copy2(weights, out / "weights.pt")
    (out / "model_config.json").write_text(mcfg.model_dump_json(indent=2))
    _write_histories(out, dv, exclude_seen, {"kind": NETWORK})
    return out


def write_baseline_bundle(out: Path, data_path: Path, baseline: str, exclude_seen: bool) -> Path:
    """Write a baseline's bundle directory `out` (must not exist): the vocabularies, histories and
    encoding rules of a data version; the baseline itself is rebuilt from the histories' training
    events when the bundle is loaded (no weights, no views)."""
    if baseline not in BASELINES:
        raise SeqrecError(f"unknown baseline {baseline!r} (known: {', '.join(BASELINES)})")
    out = Path(out)
    out.mkdir(parents=True)
    _write_histories(out, DataVersion(data_path), exclude_seen, {"kind": BASELINE, "baseline": baseline})
    return out


def _write_histories(out: Path, dv: DataVersion, exclude_seen: bool, kind: dict) -> None:
    """What every bundle has: vocabularies, each user's history and bundle.json (encoding rules)."""
    for name in ("items.parquet", "users.parquet"):
        shutil.copy2(dv.vocab_dir / name, out / name)
    info_table = dv.items_table()
    if len(info_table.columns) > 1:  # what a served answer shows next to an item id (titles, attributes)
        info_table.drop(columns=[c for c in ("item_id",) if c in info_table]).to_parquet(out / ITEM_INFO, index=False)
    seq = dv.sequences(["user_id", "user_idx", "items", "event_types", "gap_buckets", "timestamps", "n_train"])
    seq["last_timestamp"] = [int(t[-1]) for t in seq["timestamps"]]
    # what the model learned from, per user: the A/B refuses to judge it on those events later
    seq["train_last_timestamp"] = [int(t[n - 1]) if n else -1 for t, n in zip(seq["timestamps"], seq["n_train"])]
    seq = seq.rename(columns={"n_train": "train_events"})  # its first train_events items trained the model
    seq.drop(columns="timestamps").to_parquet(out / "histories.parquet", index=False)
    etypes = np.concatenate(list(seq["event_types"])) if len(seq) else np.zeros(0, np.int64)
    gaps = np.concatenate(list(seq["gap_buckets"])) if len(seq) else np.zeros(0, np.int64)
    gaps = gaps[gaps > 1]
    info = {
        "format": BUNDLE_FORMAT, **kind, "created": time.time(), "data_version": dv.version,
        "n_items": dv.n_items, "n_users": dv.n_users,
        "event_types": dv.event_types, "gap_bucket_edges_s": dv.gap_bucket_edges_s,
        # used when a request gives item ids only (no event types / timestamps): the most common ones
        "default_event_type": int(np.bincount(etypes).argmax()) if len(etypes) else 1,
        "default_gap_bucket": int(np.bincount(gaps).argmax()) if len(gaps) else 2,
        "exclude_seen": bool(exclude_seen),
        "item_multi": list(dv.schema.get("item_multi", [])),  # `|`-separated attributes of item_info.parquet
    }
    (out / "bundle.json").write_text(json.dumps(info, indent=2))


@dataclass
class Encoded:
    """A batch of histories in this model's index space."""

    items: list[np.ndarray]
    etypes: list[np.ndarray]
    gaps: list[np.ndarray]
    users: np.ndarray


class Scorer:
    """Scores histories with a bundle's network (or baseline, `kind` "baseline"); maps ids in and out."""

    def __init__(self, root: Path | str, device: str = "cpu") -> None:
        root = Path(root)
        if not (root / "bundle.json").is_file():
            raise SeqrecError(f"{root} is not a seqrec model bundle (bundle.json missing)")
        self.info = json.loads((root / "bundle.json").read_text())
        if self.info["format"] != BUNDLE_FORMAT:
            raise SeqrecError(f"{root}: bundle format {self.info['format']}, this code reads {BUNDLE_FORMAT}")
        self.kind = self.info.get("kind", NETWORK)  # bundles from before baseline bundles: a network
        if self.kind not in (NETWORK, BASELINE):
            raise SeqrecError(f"{root}: bundle kind {self.kind!r}, this code reads {NETWORK!r} and {BASELINE!r}")
        self.device = torch.device(device)
        vocab = pd.read_parquet(root / "items.parquet")
        self.item_ids = np.full(self.info["n_items"], None, object)
        self.item_ids[vocab["item_idx"].to_numpy()] = vocab["item_id"].to_numpy(dtype=object)
        self.item_index = pd.Index(self.item_ids[ITEM_FIRST:].astype(str))
        users = pd.read_parquet(root / "users.parquet")
        self.user_vocab = pd.Index(users["user_id"].astype(str)).rename(None)
        self.user_vocab_idx = users["user_idx"].to_numpy(np.int64)
        hist = pd.read_parquet(root / "histories.parquet")
        self.hist_index = pd.Index(hist["user_id"].astype(str))
        self.hist = {c: list(hist[c]) for c in ("items", "event_types", "gap_buckets")}
        self.hist_user_idx = hist["user_idx"].to_numpy(np.int64)
        # what the model learned from (bundles from before this record: None)
        self.hist_train_last = (hist["train_last_timestamp"].to_numpy(np.int64)
                                if "train_last_timestamp" in hist else None)
        self.hist_train_n = hist["train_events"].to_numpy(np.int64) if "train_events" in hist else None
        self.hist_last_ts = hist["last_timestamp"].to_numpy(np.int64) if "last_timestamp" in hist else None
        self.item_info = self._load_item_info(root)
        self._masks: dict[tuple, np.ndarray] = {}
        self.etype_index = pd.Index(self.info["event_types"])
        self.edges = np.asarray(self.info["gap_bucket_edges_s"], np.int64)
        self.net: SeqRecNet | None = None
        self.baseline: Popularity | Markov | None = None
        if self.kind == BASELINE:
            counts = self._load_baseline(root)
        else:
            self.cfg = bundle_model_config(json.loads((root / "model_config.json").read_text()))
            self.net = load_net(root / "views", self.cfg, self.info["n_items"], self.info["n_users"])
            self.net.load_state_dict(torch.load(root / "weights.pt", map_location="cpu", weights_only=True))
            self.net.to(self.device).eval()
            with torch.no_grad():
                self.table = self.net.items.table()
            counts = np.load(root / "views" / "item_arrays.npz")["train_counts"].astype(np.float64)
        counts[:ITEM_FIRST] = -1
        self.popular = np.argsort(-counts, kind="stable")[: self.info["n_items"] - ITEM_FIRST]

    def _load_baseline(self, root: Path) -> np.ndarray:
        """The baseline rebuilt from the stored training events, as the evaluation built it; returns
        the training popularity counts (the `popular` fallback)."""
        name = self.info.get("baseline")
        if name not in BASELINES:
            raise SeqrecError(f"{root}: unknown baseline {name!r} (known: {', '.join(BASELINES)})")
        if self.hist_train_n is None:
            raise SeqrecError(f"{root}: a baseline bundle needs the histories' train_events")
        train = [np.asarray(h, np.int64)[:n] for h, n in zip(self.hist["items"], self.hist_train_n)]
        n = self.n_items
        self.baseline = BASELINES[name](train, n)
        return np.bincount(np.concatenate(train), minlength=n).astype(np.float64) if train else np.zeros(n)

    def _load_item_info(self, root: Path) -> pd.DataFrame:
        """Item side information, one row per item index (empty columns for a bundle without it)."""
        frame = pd.DataFrame(index=pd.RangeIndex(self.n_items, name="item_idx"))
        if (root / ITEM_INFO).is_file():
            table = pd.read_parquet(root / ITEM_INFO).set_index("item_idx")
            frame = frame.join(table)
        return frame

    def attribute_mask(self, column: str, values: list[str]) -> np.ndarray:
        """(n_items,) bool: items whose attribute `column` is one of `values` (for a `|`-separated
        multi-valued attribute: has one of them). A KeyError names an unknown attribute."""
        if column not in self.item_info.columns:
            raise KeyError(column)
        key = (column, tuple(sorted(map(str, values))))
        if key not in self._masks:
            if len(self._masks) >= 1024:  # a bounded cache: filters repeat (a category page, a genre row)
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = self._attribute_mask(column, values)
        return self._masks[key]

    def _attribute_mask(self, column: str, values: list[str]) -> np.ndarray:
        col = self.item_info[column]
        wanted = {str(v) for v in values}
        if column in self.info.get("item_multi", []):
            parts = col.astype("string").fillna("").str.split(MULTI_SEP, regex=False)
            return np.array([bool(wanted.intersection(p)) for p in parts], bool)
        return col.astype("string").isin(list(wanted)).fillna(False).to_numpy(bool)

    # ------------------------------------------------------------------ encoding

    @property
    def n_items(self) -> int:
        return int(self.info["n_items"])

    def user_rows(self, user_ids) -> np.ndarray:
        """Row in the stored histories per user id (-1 = unknown user)."""
        return self.hist_index.get_indexer(pd.Index(np.asarray(user_ids, dtype=object).astype(str)))

    def trained_on(self, user_ids, item_ids, timestamps) -> np.ndarray | None:
        """Per event (user, item, time): whether this model trained on it (None: not recorded). An
        event before the user's last training event is in the training prefix; one at that very
        second (logs often give several events one timestamp) only if its item is among the user's
        training items."""
        if self.hist_train_last is None:
            return None
        rows = self.user_rows(user_ids)
        known = rows >= 0
        last = np.where(known, self.hist_train_last[np.maximum(rows, 0)], -1)
        ts = np.asarray(timestamps, np.int64)
        hit = known & (ts < last)
        for i in np.flatnonzero(known & (ts == last)):
            r = rows[i]
            n = self.hist_train_n[r] if self.hist_train_n is not None else len(self.hist["items"][r])
            hit[i] = str(item_ids[i]) in set(self.item_ids[np.asarray(self.hist["items"][r][:n])].astype(str))
        return hit

    def user_idx(self, user_ids) -> np.ndarray:
        pos = self.user_vocab.get_indexer(pd.Index(np.asarray(user_ids, dtype=object).astype(str)))
        return np.where(pos >= 0, self.user_vocab_idx[np.maximum(pos, 0)], USER_UNKNOWN)

    def item_idx(self, ids) -> np.ndarray:
        pos = self.item_index.get_indexer(pd.Index(np.asarray(ids, dtype=object).astype(str)))
        return np.where(pos >= 0, pos + ITEM_FIRST, ITEM_UNKNOWN).astype(np.int64)

    def stored(self, rows: np.ndarray) -> Encoded:
        """Known users' full stored histories."""
        return Encoded([np.asarray(self.hist["items"][r], np.int64) for r in rows],
                       [np.asarray(self.hist["event_types"][r], np.int64) for r in rows],
                       [np.asarray(self.hist["gap_buckets"][r], np.int64) for r in rows],
                       self.hist_user_idx[rows])

    def extended(self, rows: np.ndarray, items: list[list], event_types: list[list | None],
                 timestamps: list[list | None]) -> Encoded:
        """Stored histories (row -1: a user the model never saw, empty) followed by events that
        arrived after them (item ids, optional event types and unix-second timestamps): the first
        new event's gap is measured from the user's last stored event, as preprocessing would."""
        stored = self.stored(np.maximum(rows, 0))
        new = self.encode(items, None, event_types, timestamps)
        out = Encoded([], [], [], np.where(rows >= 0, stored.users, USER_UNKNOWN).astype(np.int64))
        for j, r in enumerate(rows):
            known = r >= 0
            gaps = new.gaps[j]
            ts = timestamps[j] if timestamps is not None else None
            if known and len(gaps):
                if ts is not None and len(ts) == len(gaps) and self.hist_last_ts is not None:
                    gaps = gap_buckets_of(np.concatenate([[self.hist_last_ts[r]], np.asarray(ts, np.int64)]),
                                          self.edges)[1:].astype(np.int64)
                else:
                    gaps = np.full(len(gaps), self.info["default_gap_bucket"], np.int64)
            cut = len(stored.items[j]) if known else 0
            out.items.append(np.concatenate([stored.items[j][:cut], new.items[j]]))
            out.etypes.append(np.concatenate([stored.etypes[j][:cut], new.etypes[j]]))
            out.gaps.append(np.concatenate([stored.gaps[j][:cut], gaps]))
        return out

    def encode(self, histories: list, user_ids: list | None = None, event_types: list | None = None,
               timestamps: list | None = None) -> Encoded:
        """Histories of item ids (oldest first) -> this model's indices. Event types / timestamps per
        event are optional; without them the bundle's most common event type / gap bucket is used."""
        n = len(histories)
        lengths = np.array([len(h) for h in histories], np.int64)
        flat = np.concatenate([np.asarray(h, dtype=object) for h in histories]) if n and lengths.sum() else \
            np.zeros(0, object)
        items = np.split(self.item_idx(flat), np.cumsum(lengths)[:-1]) if n else []
        etypes, gaps = [], []
        for i in range(n):
            et = event_types[i] if event_types is not None else None
            if et is not None and len(et) == lengths[i]:
                codes = self.etype_index.get_indexer(pd.Index(np.asarray(et, dtype=object).astype(str)))
                etypes.append(np.where(codes > 0, codes, self.info["default_event_type"]).astype(np.int64))
            else:
                etypes.append(np.full(lengths[i], self.info["default_event_type"], np.int64))
            ts = timestamps[i] if timestamps is not None else None
            if ts is not None and len(ts) == lengths[i]:
                gaps.append(gap_buckets_of(np.asarray(ts, np.int64), self.edges).astype(np.int64))
            else:
                g = np.full(lengths[i], self.info["default_gap_bucket"], np.int64)
                g[:1] = 1
                gaps.append(g)
        users = self.user_idx(user_ids) if user_ids is not None else np.full(n, USER_UNKNOWN, np.int64)
        return Encoded(list(items), etypes, gaps, np.asarray(users, np.int64))

    # ------------------------------------------------------------------ scoring

    def _pad(self, rows: list[np.ndarray]) -> torch.Tensor:
        return torch.as_tensor(left_pad(rows, self.cfg.max_len), device=self.device)

    @torch.no_grad()
    def scores(self, enc: Encoded) -> torch.Tensor:
        """(B, n_items) float scores on CPU; padding and unknown columns are -inf."""
        if self.baseline is not None:  # the baseline's own scores (models/baselines.py), as evaluated
            s = self.baseline.score(enc.items).float().clone()
            s[:, :ITEM_FIRST] = -torch.inf
            return s
        assert self.net is not None
        seq = self._pad(enc.items)
        prefix = None
        if self.cfg.user_history and self.net.attr_target is not None:  # the events before the window
            pre = history_prefixes(enc.items, self.cfg.max_len, self.net.attr_target.numpy())
            prefix = (pre["pre_n"], pre["pre_attr"])
        h = self.net.last_state(seq, self._pad(enc.etypes), self._pad(enc.gaps),
                                torch.as_tensor(enc.users, device=self.device), self.table, prefix)
        s = self.net.rank(h, seq, self.table)(0, self.net.n_items).float().cpu()
        s[:, :ITEM_FIRST] = -torch.inf
        return s

    def scores_on(self, enc: Encoded, catalogue: np.ndarray) -> torch.Tensor:
        """Scores over another catalogue (item ids by that catalogue's index): the A/B re-scores an old
        model on today's data. Items this model never saw score -inf (it cannot recommend them)."""
        col = self.item_idx(catalogue)
        col[: ITEM_FIRST] = ITEM_UNKNOWN
        s = self.scores(enc)[:, torch.as_tensor(col)]
        return s

    def top_k(self, enc: Encoded, k: int, exclude_seen: bool | None = None, blocked: list[np.ndarray] | None = None,
              allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, k') item indices and scores, best first, and per row how many of them are
        recommendations (`n`): rankable items only, never padding, the unknown item, a seen item
        when seen items are excluded, a row's `blocked` items, an item outside `allowed` ((B,
        n_items) bool) or a -inf/NaN score. k' = min(k, the most any row can rank); a row's entries
        past its `n` are filler and must not be served."""
        s = self.scores(enc)
        if blocked is not None:
            rows = np.repeat(np.arange(len(blocked)), [len(b) for b in blocked])
            if len(rows):
                s[torch.as_tensor(rows), torch.as_tensor(np.concatenate(blocked).astype(np.int64))] = -torch.inf
        if allowed is not None:
            s[~torch.as_tensor(allowed)] = -torch.inf
        if self.info["exclude_seen"] if exclude_seen is None else exclude_seen:
            rows = np.repeat(np.arange(len(enc.items)), [len(h) for h in enc.items])
            if len(rows):
                s[torch.as_tensor(rows), torch.as_tensor(np.concatenate(enc.items))] = -torch.inf
        s = torch.nan_to_num(s, nan=-torch.inf, posinf=torch.finfo(s.dtype).max, neginf=-torch.inf)  # NaN: not rankable
        rankable = (s > -torch.inf).sum(1).numpy()
        k = min(k, int(rankable.max())) if len(rankable) else 0
        v, i = s.topk(k, dim=1)  # -inf sorts last: a row's rankable items are its first entries
        return i.numpy(), v.numpy(), np.minimum(rankable, k)

    def recommend(self, frame: pd.DataFrame, k: int = 10, batch_size: int = 256) -> pd.DataFrame:
        """Rows with `user_id` and/or `history` (list of item ids; optional `event_types`, `timestamps`)
        and optional `k` -> top-k `item_ids` and `scores` per row. `history` wins over the stored one;
        a user with neither gets the most popular items (source 'popular')."""
        if "user_id" not in frame and "history" not in frame:
            raise SeqrecError("recommend: the input needs a 'user_id' or a 'history' column")
        n = len(frame)
        users = _column(frame, "user_id", n)
        hists = _column(frame, "history", n)
        ks = _column(frame, "k", n)
        ks = np.array([int(x) if _present(x) else k for x in ks], np.int64)
        if (ks < 1).any():
            raise SeqrecError(f"recommend: column 'k' must be >= 1 (got {int(ks.min())})")
        rows = self.user_rows([u if _present(u) else "" for u in users])
        has_hist = np.array([_present(h) and len(h) > 0 for h in hists])
        source = np.where(has_hist, "history", np.where(rows >= 0, "user", "popular"))
        out_items: list = [None] * n
        out_scores: list = [None] * n
        for lo in range(0, n, batch_size):
            idx = np.arange(lo, min(n, lo + batch_size))
            for kind in ("history", "user"):
                sel = idx[source[idx] == kind]
                if not len(sel):
                    continue
                if kind == "user":
                    enc = self.stored(rows[sel])
                else:
                    enc = self.encode([list(hists[i]) for i in sel], [users[i] if _present(users[i]) else ""
                                                                     for i in sel],
                                      _optional_lists(frame, "event_types", sel), _optional_lists(frame, "timestamps", sel))
                top_i, top_v, top_n = self.top_k(enc, int(ks[sel].max()))
                for j, i in enumerate(sel):
                    m = min(ks[i], top_n[j])
                    out_items[i] = [str(x) for x in self.item_ids[top_i[j, :m]]]
                    out_scores[i] = [float(x) for x in top_v[j, :m]]
        for i in np.flatnonzero(source == "popular"):
            top = self.popular[: ks[i]]
            out_items[i] = [str(x) for x in self.item_ids[top]]
            out_scores[i] = [float("nan")] * len(top)
        return pd.DataFrame({"user_id": [str(u) if _present(u) else None for u in users],
                             "item_ids": out_items, "scores": out_scores, "source": source})

    def score_all(self, k: int = 10, batch_size: int = 512) -> pd.DataFrame:
        """Top-k for every known user, long format (user_id, rank, item_id, score)."""
        n = len(self.hist_index)
        parts = []
        for lo in range(0, n, batch_size):
            rows = np.arange(lo, min(n, lo + batch_size))
            top_i, top_v, top_n = self.top_k(self.stored(rows), k)
            served = np.arange(top_i.shape[1])[None, :] < top_n[:, None]  # each row's recommendations
            parts.append(pd.DataFrame({"user_id": np.repeat(self.hist_index[rows].to_numpy(), top_n),
                                       "rank": np.broadcast_to(np.arange(1, top_i.shape[1] + 1, dtype=np.int32),
                                                               top_i.shape)[served],
                                       "item_id": self.item_ids[top_i[served]].astype(str),
                                       "score": top_v[served].astype(np.float32)}))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            {"user_id": [], "rank": [], "item_id": [], "score": []})


def _present(x) -> bool:
    if x is None:
        return False
    if isinstance(x, float) and np.isnan(x):
        return False
    return True


def _column(frame: pd.DataFrame, name: str, n: int) -> list:
    return list(frame[name]) if name in frame else [None] * n


def _optional_lists(frame: pd.DataFrame, name: str, sel: np.ndarray) -> list | None:
    if name not in frame:
        return None
    col = frame[name].to_numpy(dtype=object)
    return [col[i] if _present(col[i]) else None for i in sel]


def write_scores(scorer: Scorer, out: Path, k: int, batch_size: int = 512) -> dict:
    """Batch top-k of every known user to parquet (written to a temp file, then renamed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    frame = scorer.score_all(k, batch_size)
    seconds = time.perf_counter() - t
    tmp = out.with_name(f".{out.name}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(out)
    users = int(frame["user_id"].nunique())
    return {"users": users, "rows": len(frame), "seconds": seconds, "users_per_s": users / max(seconds, 1e-9)}
