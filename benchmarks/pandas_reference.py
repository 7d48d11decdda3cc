"""A straightforward single-process pandas implementation of the preprocessing transformation.

It is the reference for the preprocessing benchmark (speed, memory) and, in tests, an independent
check that the Dask pipeline computes the same sequences. It deliberately uses the obvious pandas
idioms (concat everything, drop_duplicates, groupby().agg(list)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.preprocess import PreprocessConfig, event_type_vocab
from tasks.sources import ResolvedInputs
from validation.config import ValidationConfig
from validation.contract import event_pieces, read_events_piece


def reference_sequences(inputs: ResolvedInputs, pcfg: PreprocessConfig, vcfg: ValidationConfig) -> pd.DataFrame:
    frames = []
    for i, (f, rg) in enumerate(event_pieces(inputs.events)):
        df = read_events_piece(f, rg, inputs.event_format())
        df["order"] = (i << 36) + np.arange(len(df))
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if pcfg.event_types is not None and "event_type" in df:
        df = df[df["event_type"].isin(pcfg.event_types)]
    if pcfg.min_value is not None and "value" in df:
        df = df[df["value"] >= pcfg.min_value]
    df = df.dropna(subset=["user_id", "item_id", "timestamp"])
    if "event_type" not in df:
        df["event_type"] = "event"
    if "value" not in df:
        df["value"] = np.nan
    df = df.sort_values("order").drop_duplicates(subset=[c for c in df.columns if c != "order"], keep="first")
    for _ in range(pcfg.kcore_max_iter):
        ic = df["item_id"].map(df["item_id"].value_counts())
        uc = df["user_id"].map(df["user_id"].value_counts())
        keep = (ic >= pcfg.min_item_events) & (uc >= pcfg.min_user_events)
        if keep.all():
            break
        df = df[keep]
    items = sorted(df["item_id"].unique())
    users = sorted(df["user_id"].unique())
    df["item"] = df["item_id"].map({k: i + 2 for i, k in enumerate(items)}).astype(np.int32)
    df["user_idx"] = df["user_id"].map({k: i + 1 for i, k in enumerate(users)}).astype(np.int32)
    etypes = event_type_vocab(vcfg, pcfg)
    df["etype"] = df["event_type"].map({k: i for i, k in enumerate(etypes)}).astype(np.int8)
    df = df.sort_values(["user_idx", "timestamp", "order"])
    df["gap"] = df.groupby("user_idx")["timestamp"].diff()
    edges = np.asarray(pcfg.gap_bucket_edges_s)
    df["gap_bucket"] = np.where(df["gap"].isna(), 1, 2 + np.searchsorted(edges, df["gap"].fillna(0), side="left"))
    df["new_session"] = df["gap"].isna() | (df["gap"] > pcfg.session_gap_s)
    df["session"] = df.groupby("user_idx")["new_session"].cumsum() - 1
    g = df.groupby("user_idx", sort=True)
    out = pd.DataFrame({
        "user_id": g["user_id"].first(),
        "items": g["item"].agg(list),
        "event_types": g["etype"].agg(list),
        "timestamps": g["timestamp"].agg(list),
        "gap_buckets": g["gap_bucket"].agg(list),
        "sessions": g["session"].agg(list),
        "values": g["value"].agg(list),
    }).reset_index()
    out["n_events"] = out["items"].str.len()
    out["split"] = [[0] * (n - 2) + [1, 2] if n >= 3 else [0] * n for n in out["n_events"]]
    out["n_train"] = np.where(out["n_events"] >= 3, out["n_events"] - 2, out["n_events"])
    return out
