"""Warm start (`train.init_from=champion`): a new training job starts from the champion's weights.

The champion was trained on another data version, so its item rows are matched by item id: an item
both versions have starts from the champion's embedding, a new item from the fresh initialisation.
Every other parameter is copied when its shape is the same (same model config); one whose shape
changed (another config, a side-information vocabulary that grew) keeps its fresh initialisation
and is listed. Only parameters are copied: the item and user tables are today's data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from seqrec.encoding import ITEM_FIRST
from seqrec.errors import SeqrecError

ITEM_ROWS = ("items.id_emb.weight",)  # parameters with one row per item index


def warm_start(net: torch.nn.Module, bundle: Path, item_ids_now: np.ndarray) -> dict:
    """Load the bundle's weights into `net` (see the module doc); returns what was carried over."""
    bundle = Path(bundle)
    if not (bundle / "weights.pt").is_file():
        raise SeqrecError(f"train.init_from: {bundle} has no network weights (a baseline champion cannot warm-start "
                          f"a network; set train.init_from=none)")
    old = torch.load(bundle / "weights.pt", map_location="cpu", weights_only=True)
    vocab = pd.read_parquet(bundle / "items.parquet")
    old_pos = pd.Index(vocab["item_id"].astype(str)).get_indexer(pd.Index(item_ids_now[ITEM_FIRST:].astype(str)))
    old_rows = vocab["item_idx"].to_numpy(np.int64)
    copied, kept = 0, []
    items = {"matched": int((old_pos >= 0).sum()), "new": int((old_pos < 0).sum())}
    with torch.no_grad():
        for name, p in net.named_parameters():
            src = old.get(name)
            if src is None:
                kept.append(name)
            elif name in ITEM_ROWS and src.shape[1:] == p.shape[1:]:
                have = np.flatnonzero(old_pos >= 0)
                now = torch.as_tensor(have + ITEM_FIRST)
                p[now] = src[torch.as_tensor(old_rows[old_pos[have]])].to(p.dtype)
                p[:ITEM_FIRST] = src[:ITEM_FIRST].to(p.dtype)  # padding and the unknown item
                copied += 1
            elif src.shape == p.shape:
                p.copy_(src.to(p.dtype))
                copied += 1
            else:
                kept.append(name)
    n = sum(1 for _ in net.parameters())
    return {"parameters_copied": copied, "parameters": n, "fresh": kept, "items": items}
