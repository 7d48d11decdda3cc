"""Preprocessing on Dask: raw files -> a content-addressed data version.

Work is split into Dask futures so that every step is explicit and memory stays bounded:
  A. per input piece (parquet row group / CSV file): map + type columns, quarantine, row filters,
     unique ids;
  B. per piece: ids -> codes in the global raw vocabulary, hash-partition rows by user;
  C. per user bucket: exact-duplicate removal, item/user counts (iterated to a k-core);
  D. per user bucket: final indices, stable time order, sessions, gap buckets, split markers,
     one parquet part of sequences.parquet.
Everything is written into a staging directory; `validate_processed` renames it into place only
after the processed suite passed, so a data version directory is always complete.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from seqrec.catalog import USER_FIRST, DataVersion
from seqrec.encoding import ITEM_FIRST, ITEM_PAD, ITEM_UNKNOWN, USER_UNKNOWN, gap_buckets, normalise_labels
from seqrec.errors import DataContractError
from seqrec.fsutil import stable_hash
from seqrec.splits import Cutoffs, resolve_cutoff, split_codes
from tasks.sources import ResolvedInputs
from validation.config import ValidationConfig
from validation.contract import EventFormat, event_pieces, read_events_piece
from validation.suites import Rule, quarantine_mask

PREPROCESS_CODE_VERSION = 1


class PreprocessConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_types: list[str] | None = Field(None, description="keep only these event types (default: all)")
    min_value: float | None = Field(None, description="drop events with value below this (e.g. rating >= 4)")
    min_user_events: int = Field(1, ge=1)
    min_item_events: int = Field(1, ge=1)
    kcore_max_iter: int = Field(20, ge=1, description="alternate user/item count filters until stable")
    session_gap_s: int = Field(1800, ge=1, description="a gap above this starts a new session")
    gap_bucket_edges_s: list[int] = [60, 300, 1800, 3600, 10_800, 43_200, 86_400, 259_200, 604_800,
                                     2_592_000, 15_552_000]
    rows_per_bucket: int = Field(2_000_000, ge=1000, description="target events per user bucket (parallel unit)")

    @field_validator("event_types")
    @classmethod
    def _normalised(cls, v: list[str] | None) -> list[str] | None:
        return normalise_labels(v)


class SplitConfig(BaseModel):
    """The evaluation protocol (seqrec/splits.py), configured as eval.protocol / eval.cutoff /
    eval.validation_cutoff and baked into the data version (its sequences carry the split)."""

    model_config = ConfigDict(extra="forbid")
    protocol: Literal["loo", "temporal"] = "loo"
    cutoff: float | str = Field(0.9, description="temporal: the test cut-off: a fraction in (0, 1) = share of the "
                                "events before it, or unix seconds, or an ISO date (UTC)")
    validation_cutoff: float | str | None = Field(None, description="temporal: the validation cut-off, before "
                                                  "`cutoff`; default: the same share of the events before it as "
                                                  "`cutoff` leaves before itself")

    @field_validator("cutoff", "validation_cutoff", mode="before")
    @classmethod
    def _dates_as_text(cls, v):
        """YAML and --set read 2026-11-30 as a date: keep it as the ISO text resolve_cutoff reads."""
        import datetime as dt

        return v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v
    next_events: int = Field(5, ge=1, description="temporal: test on each user's first this many events after "
                                                  "the cut-off (each with all earlier events as history)")


class PreprocessResult(BaseModel):
    data_version: str
    path: str
    staging_path: str | None = None
    reused: bool = False
    counts: dict[str, int] = {}
    drops: dict[str, int] = {}
    seconds: float = 0.0

    def as_reused(self) -> "PreprocessResult":
        """The version as found on disk (a cache hit, or the content-addressed version already there)."""
        return self.model_copy(update={"reused": True, "staging_path": None})

    def summary(self) -> dict:
        return {"data_version": self.data_version, "data_path": self.path, "data_reused": self.reused,
                "drops": self.drops, "dataset": {k: self.counts[k] for k in ("users", "items", "events")}}

    def describe(self) -> str:
        return (f"preprocess: data version {self.data_version} ({'reused' if self.reused else 'new'}), "
                f"{self.summary()['dataset']}, dropped {self.drops}")


def data_version(inputs: ResolvedInputs, pcfg: PreprocessConfig, vcfg: ValidationConfig,
                 split: SplitConfig | None = None, qrules: list[Rule] | None = None) -> str:
    """The content hash of what a data version is made of: the raw files, how they are read, the
    preprocessing, and the quarantine: its configuration and the rules whose rows were dropped."""
    split = split or SplitConfig()
    return stable_hash({
        # leave-one-out versions keep the hash they had before the protocol was configurable, and
        # versions read by the default rules or with nothing quarantined keep theirs
        **({"split": split.model_dump()} if split.protocol != "loo" else {}),
        **({"reading": inputs.reading_rules()} if inputs.reading_rules() else {}),
        **({"quarantined": [dataclasses.asdict(r) for r in qrules]} if qrules else {}),
        "inputs": inputs.fingerprint, "columns": inputs.columns.model_dump(), "schema": inputs.schema_.model_dump(),
        "preprocess": pcfg.model_dump(), "quarantine": vcfg.model_dump(include={"mode", "max_quarantine_fraction",
                                                                                "allowed_event_types", "value_min",
                                                                                "value_max"}),
        "code": PREPROCESS_CODE_VERSION,
    }, n=16)


def event_type_vocab(vcfg: ValidationConfig, pcfg: PreprocessConfig, null_event_type: str | None = "event") -> list[str]:
    """Index 0 = padding, then the allowed types in config order (+ 'event' for logs without types,
    + the declared type of a null event type)."""
    kept = pcfg.event_types or vcfg.allowed_event_types
    return ["<pad>", *dict.fromkeys([*kept, "event", *([null_event_type] if null_event_type else [])])]


# --------------------------------------------------------------------------- phase A / B (per piece)


def _load_piece(idx: int, file: str, row_group: int | None, fmt: EventFormat, qrules: list[Rule] | None,
                event_types: list[str] | None, min_value: float | None) -> tuple[pd.DataFrame, dict]:
    df = read_events_piece(file, row_group, fmt)
    df["_order"] = (np.int64(idx) << np.int64(36)) + np.arange(len(df), dtype=np.int64)
    stats: dict = {"input": len(df)}
    if qrules:
        bad = quarantine_mask(df, qrules)
        stats["quarantined"] = int(bad.sum())
        df = df[~bad]
    if event_types is not None and "event_type" in df.columns:
        stats["seen_event_types"] = set(df["event_type"].dropna().unique().tolist())
        keep = df["event_type"].isin(event_types)
        stats["event_type_filter"] = int((~keep).sum())
        df = df[keep]
    if min_value is not None and "value" in df.columns:
        keep = df["value"] >= min_value
        stats["value_threshold"] = int((~keep).sum())
        df = df[keep]
    df = df.dropna(subset=["user_id", "item_id", "timestamp"])
    return df.reset_index(drop=True), stats


def _compact_piece(idx: int, file: str, row_group: int | None, fmt: EventFormat, qrules: list[Rule] | None,
                   event_types: list[str] | None, min_value: float | None) -> tuple[pd.DataFrame, dict]:
    """Load, filter, and keep only compact columns until the global vocabulary exists: ids become
    piece-local codes (+ the piece's unique ids), so the events held between phases A and B cost ~30
    bytes each instead of two Python strings (100M events stay within the workers' memory limits)."""
    df, stats = _load_piece(idx, file, row_group, fmt, qrules, event_types, min_value)
    u_codes, u_uni = pd.factorize(df["user_id"])
    i_codes, i_uni = pd.factorize(df["item_id"])
    out = pd.DataFrame({"u": u_codes.astype(np.int32), "i": i_codes.astype(np.int32),
                        "ts": df["timestamp"].to_numpy(dtype=np.int64), "order": df["_order"].to_numpy()})
    if "event_type" in df.columns:
        out["event_type"] = df["event_type"].astype("category").to_numpy()
    if "value" in df.columns:
        out["value"] = df["value"].to_numpy(dtype=np.float32, na_value=np.nan)
    if "session_id" in df.columns:
        out["session_key"] = pd.util.hash_array(df["session_id"].fillna("").to_numpy(dtype=object)).astype(np.int64)
    uniques = {"users": np.asarray(u_uni, dtype=object), "items": np.asarray(i_uni, dtype=object)}
    return out, {**stats, "uniques": uniques, "file": file}


def _uniques(piece: tuple[pd.DataFrame, dict]) -> tuple[np.ndarray, np.ndarray, dict]:
    _, stats = piece
    return (stats["uniques"]["users"], stats["uniques"]["items"],
            {k: v for k, v in stats.items() if k != "uniques"})


def _sorted_ids(arrays: list[np.ndarray]) -> pd.Index:
    """The sorted distinct ids of all pieces, as Python strings: a fixed-width numpy string array
    would give every id the width of the longest one."""
    if not arrays:
        return pd.Index([], dtype=object)
    return pd.Index(np.sort(pd.unique(np.concatenate(arrays).astype(object))), dtype=object)


def _encode_piece(piece: tuple[pd.DataFrame, dict], users: pd.Index, items: pd.Index, etypes: list[str],
                  n_buckets: int) -> list[pd.DataFrame]:
    df, stats = piece
    user_map = users.get_indexer(stats["uniques"]["users"]).astype(np.int32)
    item_map = items.get_indexer(stats["uniques"]["items"]).astype(np.int32)
    etype = (pd.Index(etypes).get_indexer(df["event_type"]) if "event_type" in df.columns
             else np.full(len(df), etypes.index("event")))
    if (etype < 1).any():  # the raw gate's rules keep these out; never let one reach training as an index
        bad = df["event_type"][etype < 1]
        raise DataContractError(stats.get("file"), "event_type", f"event_type must be one of {etypes[1:]}",
                                bad.head(5).tolist(), int(len(bad)))
    out = pd.DataFrame({
        "user": user_map[df["u"].to_numpy()],
        "item": item_map[df["i"].to_numpy()],
        "ts": df["ts"].to_numpy(),
        "etype": etype.astype(np.int8),
        "value": df["value"].to_numpy() if "value" in df.columns else np.full(len(df), np.nan, np.float32),
        "order": df["order"].to_numpy(),
    })
    if "session_key" in df.columns:
        out["session_key"] = df["session_key"].to_numpy()
    bucket = out["user"].to_numpy() % n_buckets
    return [out[bucket == b].reset_index(drop=True) for b in range(n_buckets)]


# --------------------------------------------------------------------------- phase C / D (per bucket)


def _dedup_bucket(*parts: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    df = pd.concat(parts, ignore_index=True)
    cols = [c for c in df.columns if c != "order"]
    # keep the first occurrence in original row order
    df = df.sort_values("order", kind="stable")
    dup = df.duplicated(subset=cols, keep="first")
    return df[~dup].reset_index(drop=True), int(dup.sum())


def _bucket_counts(bucket: tuple[pd.DataFrame, int], item_keep: np.ndarray | None, user_keep: np.ndarray | None,
                   n_items: int, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    df = _filtered(bucket[0], item_keep, user_keep)
    return (np.bincount(df["item"].to_numpy(), minlength=n_items),
            np.bincount(df["user"].to_numpy(), minlength=n_users))


def _filtered(df: pd.DataFrame, item_keep: np.ndarray | None, user_keep: np.ndarray | None) -> pd.DataFrame:
    mask = np.ones(len(df), bool)
    if item_keep is not None:
        mask &= item_keep[df["item"].to_numpy()]
    if user_keep is not None:
        mask &= user_keep[df["user"].to_numpy()]
    return df[mask] if not mask.all() else df


def build_sequences(df: pd.DataFrame, user_ids: np.ndarray, session_gap_s: int, edges: np.ndarray,
                    cuts: Cutoffs | None = None) -> pa.Table:
    """Rows of (user, item, ts, etype, value, order) with final indices -> one row per user, split
    by the protocol (seqrec/splits.py; `cuts` None: leave-one-out)."""
    order = np.lexsort((df["order"].to_numpy(), df["ts"].to_numpy(), df["user"].to_numpy()))
    user = df["user"].to_numpy()[order]
    ts = df["ts"].to_numpy()[order]
    n = len(user)
    first = np.ones(n, bool)
    first[1:] = user[1:] != user[:-1]
    starts = np.flatnonzero(first)
    lengths = np.diff(np.append(starts, n))
    gaps = np.zeros(n, np.int64)
    gaps[1:] = ts[1:] - ts[:-1]
    gaps[first] = 0
    new_session = first | (gaps > session_gap_s)
    if "session_key" in df.columns:
        sk = df["session_key"].to_numpy()[order]
        new_session[1:] |= sk[1:] != sk[:-1]
    sess_global = np.cumsum(new_session) - 1
    session = (sess_global - np.repeat(sess_global[starts], lengths)).astype(np.int32)
    split, n_train = split_codes(lengths, ts, cuts)
    offsets = pa.array(np.append(starts, n).astype(np.int32))

    def lst(values: np.ndarray) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, pa.array(values))

    uidx = user[starts]
    return pa.table({
        "user_idx": pa.array(uidx.astype(np.int32)),
        "user_id": pa.array(user_ids[uidx], type=pa.string()),
        "items": lst(df["item"].to_numpy()[order].astype(np.int32)),
        "event_types": lst(df["etype"].to_numpy()[order].astype(np.int8)),
        "timestamps": lst(ts),
        "gap_buckets": lst(gap_buckets(gaps, first, edges)),
        "sessions": lst(session),
        "values": lst(df["value"].to_numpy()[order].astype(np.float32)),
        "split": lst(split),
        "n_events": pa.array(lengths.astype(np.int32)),
        "n_train": pa.array(n_train),
    })


def _finish_bucket(b: int, bucket: tuple[pd.DataFrame, int], item_keep: np.ndarray, user_keep: np.ndarray,
                   item_final: np.ndarray, user_final: np.ndarray, user_ids: np.ndarray, session_gap_s: int,
                   edges: list[int], out_dir: str, cuts: Cutoffs | None = None) -> tuple[int, int]:
    df = _filtered(bucket[0], item_keep, user_keep).copy()
    df["item"] = item_final[df["item"].to_numpy()]
    df["user"] = user_final[df["user"].to_numpy()]
    if len(df) == 0:
        return 0, 0
    table = build_sequences(df, user_ids, session_gap_s, np.asarray(edges, np.int64), cuts)
    table = table.take(pa.array(np.argsort(table["user_idx"].to_numpy(), kind="stable")))
    pq.write_table(table, Path(out_dir) / f"part-{b:05d}.parquet", row_group_size=200_000)
    return table.num_rows, len(df)


# --------------------------------------------------------------------------- driver


def _kcore(client, buckets, pcfg: PreprocessConfig, n_items: int, n_users: int) -> tuple[np.ndarray, np.ndarray, int]:
    item_keep = np.ones(n_items, bool)
    user_keep = np.ones(n_users, bool)
    iterations = 0
    for iterations in range(1, pcfg.kcore_max_iter + 1):
        ik, uk = client.scatter([item_keep, user_keep], broadcast=True, hash=False)
        counts = client.gather([client.submit(_bucket_counts, b, ik, uk, n_items, n_users, pure=False) for b in buckets])
        item_n = np.sum([c[0] for c in counts], axis=0)
        user_n = np.sum([c[1] for c in counts], axis=0)
        new_item = item_keep & (item_n >= pcfg.min_item_events)
        new_user = user_keep & (user_n >= pcfg.min_user_events)
        if (new_item == item_keep).all() and (new_user == user_keep).all():
            break
        item_keep, user_keep = new_item, new_user
    return item_keep, user_keep, iterations


def preprocess(inputs: ResolvedInputs, pcfg: PreprocessConfig, vcfg: ValidationConfig, client, workdir: Path,
               quarantine_rules: list[Rule] | None = None, split: SplitConfig | None = None) -> PreprocessResult:
    """Run phases A-D on `client`; write a staged data version (see module doc)."""
    t0 = time.perf_counter()
    split = split or SplitConfig()
    version = data_version(inputs, pcfg, vcfg, split, quarantine_rules)
    final = Path(workdir) / "data" / version
    if final.is_dir():
        dv = DataVersion(final)
        return PreprocessResult(data_version=version, path=str(final), reused=True, counts=dv.counts,
                                drops=dv.drops, seconds=time.perf_counter() - t0)
    staging = final.parent / f".staging-{version}-{int(time.time() * 1000)}"
    (staging / "sequences.parquet").mkdir(parents=True)
    try:
        return _preprocess_into(staging, final, version, inputs, pcfg, vcfg, client, quarantine_rules, t0, split)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _preprocess_into(staging: Path, final: Path, version: str, inputs: ResolvedInputs, pcfg: PreprocessConfig,
                     vcfg: ValidationConfig, client, qrules, t0: float, split: SplitConfig) -> PreprocessResult:
    fmt = inputs.event_format()
    etypes = event_type_vocab(vcfg, pcfg, fmt.null_event_type)
    pieces = event_pieces(inputs.events)
    loaded = [client.submit(_compact_piece, i, f, rg, fmt, qrules, pcfg.event_types, pcfg.min_value, pure=False)
              for i, (f, rg) in enumerate(pieces)]
    uniq = client.gather([client.submit(_uniques, p, pure=False) for p in loaded])
    drops: dict[str, int] = {}
    n_input = 0
    seen: set[str] = set()
    for _, _, st in uniq:
        n_input += st["input"]
        seen |= st.get("seen_event_types", set())
        for k, v in st.items():
            if k not in ("input", "seen_event_types", "file"):
                drops[k] = drops.get(k, 0) + v
    _check_filter_matches(pcfg, seen, n_input - drops.get("quarantined", 0), inputs.events[0])
    raw_users = _sorted_ids([u[0] for u in uniq])
    raw_items = _sorted_ids([u[1] for u in uniq])
    kept_rows = n_input - sum(drops.values())
    if kept_rows <= 0:
        raise DataContractError(inputs.events[0], None, "no events left after filtering "
                                f"(input {n_input}, dropped {drops})")
    n_buckets = max(1, min(64, -(-kept_rows // pcfg.rows_per_bucket)))
    u_f, i_f = client.scatter([raw_users, raw_items], broadcast=True, hash=False)
    encoded = [client.submit(_encode_piece, p, u_f, i_f, etypes, n_buckets, pure=False) for p in loaded]
    del loaded
    buckets = []
    for b in range(n_buckets):
        parts = [client.submit(lambda parts, b=b: parts[b], e, pure=False) for e in encoded]
        buckets.append(client.submit(_dedup_bucket, *parts, pure=False))
    del encoded
    dup_counts = client.gather([client.submit(lambda x: x[1], b, pure=False) for b in buckets])
    drops["duplicates"] = int(sum(dup_counts))
    item_keep, user_keep, iters = _kcore(client, buckets, pcfg, len(raw_items), len(raw_users))
    before = kept_rows - drops["duplicates"]
    # final vocab: surviving ids in sorted order, items from ITEM_FIRST, users from USER_FIRST
    item_final = np.zeros(len(raw_items), np.int32)
    item_final[item_keep] = np.arange(item_keep.sum(), dtype=np.int32) + ITEM_FIRST
    user_final = np.zeros(len(raw_users), np.int32)
    user_final[user_keep] = np.arange(user_keep.sum(), dtype=np.int32) + USER_FIRST
    user_ids = np.concatenate([["<unknown>"], raw_users.to_numpy(dtype=object)[user_keep]]).astype(object)
    scattered = client.scatter([item_keep, user_keep, item_final, user_final, user_ids], broadcast=True, hash=False)
    cuts = _cutoffs(client, buckets, scattered[0], scattered[1], split, inputs.events[0])
    rows = client.gather([client.submit(_finish_bucket, b, bk, *scattered, pcfg.session_gap_s, pcfg.gap_bucket_edges_s,
                                        str(staging / "sequences.parquet"), cuts, pure=False)
                          for b, bk in enumerate(buckets)])
    n_events = sum(r[1] for r in rows)
    drops["min_counts"] = int(before - n_events)
    counts = {"input_events": n_input, "events": int(n_events), "users": int(sum(r[0] for r in rows)),
              "items": int(item_keep.sum()), "kcore_iterations": iters}
    _write_vocab(staging, raw_items.to_numpy(dtype=object)[item_keep], user_ids[1:], etypes)
    _write_tables(staging, inputs, raw_items.to_numpy(dtype=object)[item_keep], user_ids[1:])
    meta = {"data_version": version, "created": time.time(), "counts": counts, "drops": drops,
            "source": inputs.source, "inputs": {"events": inputs.events, "users": inputs.users, "items": inputs.items,
                                                **inputs.reading_rules()},
            **({"quarantined_rules": [r.text for r in qrules]} if qrules else {}),
            "schema": inputs.schema_.model_dump(), "preprocess": pcfg.model_dump(),
            "event_types": etypes, "n_gap_buckets": len(pcfg.gap_bucket_edges_s) + 3,
            "split": {"protocol": split.protocol, **({"valid_cutoff": cuts.valid, "test_cutoff": cuts.test,
                                                      "next_events": cuts.next_events} if cuts else {})},
            "index": {"item_pad": ITEM_PAD, "item_unknown": ITEM_UNKNOWN, "item_first": ITEM_FIRST,
                      "user_unknown": USER_UNKNOWN}}
    DataVersion(staging).write_meta(meta)
    return PreprocessResult(data_version=version, path=str(final), staging_path=str(staging), counts=counts,
                            drops=drops, seconds=time.perf_counter() - t0)


def _check_filter_matches(pcfg: PreprocessConfig, seen: set[str], rows: int, file: str) -> None:
    """`preprocess.event_types` that matches no event is a mistake (a typo, another naming), not a filter."""
    if pcfg.event_types is None or rows == 0 or seen & set(pcfg.event_types):
        return
    raise DataContractError(file, "event_type", f"preprocess.event_types={pcfg.event_types} matches none of the "
                            f"events' types: {', '.join(sorted(seen)) or '(no event types)'}")


def _bucket_timestamps(bucket: tuple[pd.DataFrame, int], item_keep: np.ndarray, user_keep: np.ndarray) -> np.ndarray:
    return _filtered(bucket[0], item_keep, user_keep)["ts"].to_numpy()


def _cutoffs(client, buckets, item_keep, user_keep, split: SplitConfig, file: str) -> Cutoffs | None:
    """The temporal protocol's cut-offs in unix seconds, from the kept events (None for loo)."""
    if split.protocol == "loo":
        return None
    ts = np.concatenate(client.gather([client.submit(_bucket_timestamps, b, item_keep, user_keep, pure=False)
                                       for b in buckets]))
    test = resolve_cutoff(split.cutoff, ts)
    before = ts[ts < test]
    if not len(before) or not (ts >= test).any():
        raise DataContractError(file, "timestamp", f"eval.cutoff={split.cutoff!r} (unix {test}) must fall inside "
                                f"the events' time span {int(ts.min())}..{int(ts.max())}: events before and after it")
    # default: the validation cut-off leaves the same share of the training period after it as the
    # test cut-off leaves of all events (a date or unix-seconds cut-off too)
    share = split.validation_cutoff
    if share is None:
        fraction = isinstance(split.cutoff, (int, float)) and 0 < split.cutoff < 1
        share = split.cutoff if fraction else len(before) / len(ts)
    valid = resolve_cutoff(share, before)
    if not valid < test:
        raise DataContractError(file, "timestamp", f"eval.validation_cutoff (unix {valid}) must come before "
                                f"eval.cutoff (unix {test})")
    return Cutoffs(valid=valid, test=test, next_events=split.next_events)


def _write_vocab(out: Path, item_ids: np.ndarray, user_ids: np.ndarray, etypes: list[str]) -> None:
    (out / "vocab").mkdir(exist_ok=True)
    pq.write_table(pa.table({"item_id": pa.array(item_ids, pa.string()),
                             "item_idx": pa.array(np.arange(len(item_ids), dtype=np.int32) + ITEM_FIRST)}),
                   out / "vocab" / "items.parquet")
    pq.write_table(pa.table({"user_id": pa.array(user_ids, pa.string()),
                             "user_idx": pa.array(np.arange(len(user_ids), dtype=np.int32) + USER_FIRST)}),
                   out / "vocab" / "users.parquet")
    (out / "vocab" / "event_types.json").write_text(json.dumps(etypes))


def _write_tables(out: Path, inputs: ResolvedInputs, item_ids: np.ndarray, user_ids: np.ndarray) -> None:
    """Profile/attribute tables restricted to the vocabulary, keyed by index (views read these)."""
    (out / "tables").mkdir(exist_ok=True)
    for which, key, ids, first in (("users", "user_id", user_ids, USER_FIRST), ("items", "item_id", item_ids, ITEM_FIRST)):
        table, _ = inputs.entity_table(which)  # type: ignore[arg-type]
        if table is None:
            continue
        idx = pd.Index(ids.astype(object)).get_indexer(table[key])
        table = table[idx >= 0].assign(**{f"{key[:-3]}_idx": idx[idx >= 0] + first}).sort_values(f"{key[:-3]}_idx")
        table.to_parquet(out / "tables" / f"{which}.parquet", index=False)
