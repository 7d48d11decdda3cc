"""The catalog: the one place that knows how a data version and its views lie on disk.

A data version is a directory named by its content hash (raw inputs + preprocessing config + split),
written by `tasks.preprocess` into a staging directory and made visible by the processed-data gate:

    <workdir>/data/<version>/
        meta.json              counts, drops, schema, event types, split cut-offs, index conventions
        sequences.parquet/     one row per user: items, event_types, timestamps, gap_buckets, values,
                               split codes, n_train (part-*.parquet, one per user bucket)
        vocab/                 items.parquet (item_id, item_idx), users.parquet, event_types.json
        tables/                items.parquet, users.parquet: side information keyed by index
        quality/               the data-quality reports that admitted it
        views/<hash>/          per-view features for one views config (`Views`)

Every stage, training and serving reads these through `DataVersion` and `Views`; index offsets
come from `seqrec.encoding` (items from ITEM_FIRST, users from 1).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seqrec.encoding import ITEM_FIRST, USER_UNKNOWN

USER_FIRST = USER_UNKNOWN + 1


class DataVersion:
    """A data version directory (or its staging directory, before the gate moves it into place)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ layout
    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    @property
    def sequences_path(self) -> Path:
        return self.path / "sequences.parquet"

    @property
    def vocab_dir(self) -> Path:
        return self.path / "vocab"

    @property
    def tables_dir(self) -> Path:
        return self.path / "tables"

    @property
    def quality_dir(self) -> Path:
        return self.path / "quality"

    @property
    def views_root(self) -> Path:
        return self.path / "views"

    def views(self, key: str) -> "Views":
        """The views directory for a views-config key (`tasks.features.views_key`)."""
        return Views(self.views_root / key)

    def exists(self) -> bool:
        return self.meta_path.is_file()

    # ------------------------------------------------------------------ meta
    @cached_property
    def meta(self) -> dict[str, Any]:
        return json.loads(self.meta_path.read_text())

    def write_meta(self, meta: dict[str, Any]) -> None:
        from seqrec.fsutil import write_json_atomic

        write_json_atomic(self.meta_path, meta)

    @property
    def version(self) -> str:
        return self.meta["data_version"]

    @property
    def counts(self) -> dict[str, int]:
        return self.meta["counts"]

    @property
    def drops(self) -> dict[str, int]:
        return self.meta["drops"]

    @property
    def schema(self) -> dict[str, list[str]]:
        return self.meta["schema"]

    @property
    def event_types(self) -> list[str]:
        return self.meta["event_types"]

    @property
    def n_gap_buckets(self) -> int:
        return self.meta["n_gap_buckets"]

    @property
    def gap_bucket_edges_s(self) -> list[int]:
        return self.meta["preprocess"]["gap_bucket_edges_s"]

    @property
    def split(self) -> dict[str, Any]:
        return self.meta.get("split") or {"protocol": "loo"}

    @property
    def n_items(self) -> int:
        """Rows of every item table: padding and unknown, then the vocabulary."""
        return self.counts["items"] + ITEM_FIRST

    @property
    def n_users(self) -> int:
        """Rows of every user table: the unknown user, then the vocabulary."""
        return self.counts["users"] + USER_FIRST

    # ------------------------------------------------------------------ data
    def sequences(self, columns: list[str] | None = None) -> pd.DataFrame:
        import pyarrow.parquet as pq

        return pq.read_table(self.sequences_path, columns=columns).to_pandas()

    def flat_sequences(self, columns: list[str]) -> tuple[pd.DataFrame, dict[str, np.ndarray], np.ndarray]:
        """The sequences without a Python object per user: (per-user scalars user_idx, n_events,
        n_train; the named list columns flattened over all users in row order; each user's offset
        into them, n_users + 1 long). Rows are in the order `sequences()` returns them."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(self.sequences_path, columns=["user_idx", "n_events", "n_train", *columns])
        flat = {c: pc.list_flatten(table[c].combine_chunks()).to_numpy(zero_copy_only=False) for c in columns}
        lengths = table["n_events"].to_numpy().astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return table.select(["user_idx", "n_events", "n_train"]).to_pandas(), flat, offsets

    def item_vocab(self) -> pd.DataFrame:
        return pd.read_parquet(self.vocab_dir / "items.parquet")

    def item_ids(self) -> np.ndarray:
        """Item id per index (None at padding and unknown): index -> id, the catalogue."""
        vocab = self.item_vocab()
        out = np.full(self.n_items, None, object)
        out[vocab["item_idx"].to_numpy()] = vocab["item_id"].to_numpy(dtype=object)
        return out

    def items_table(self) -> pd.DataFrame:
        """Item side information keyed by item_idx (only the indices when the source has none)."""
        path = self.tables_dir / "items.parquet"
        return pd.read_parquet(path) if path.is_file() else pd.DataFrame({"item_idx": np.arange(ITEM_FIRST,
                                                                                                  self.n_items)})

    def users_table(self) -> pd.DataFrame | None:
        """User profiles keyed by user_idx, None when the source has none."""
        path = self.tables_dir / "users.parquet"
        return pd.read_parquet(path) if path.is_file() else None


VIEW_FILES = ("views.json", "item_arrays.npz", "user_arrays.npz", "item_text.npy", "transitions.npz")


class Views:
    """A views directory (`tasks.features` writes it; training and model bundles read it):

        views.json             sizes of every table, the attribute vocabulary, the text encoder used
        item_arrays.npz        cat, multi, num, pop, attr_target, train_counts (rows = item index)
        item_text.npy          text vectors (rows = item index)
        user_arrays.npz        cat, num, dense (rows = user index)
        transitions.npz        per-lag CSR transition counts of the training events
        sequence_labels.parquet  per-event engagement labels, one row per user
        item_attributes.parquet, user_profile.parquet  the same tables in a readable form
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_dir()

    @cached_property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "views.json").read_text())

    def item_arrays(self) -> Any:
        return np.load(self.path / "item_arrays.npz")

    def user_arrays(self) -> Any:
        return np.load(self.path / "user_arrays.npz")

    def item_text(self) -> np.ndarray:
        return np.load(self.path / "item_text.npy")

    def transitions(self) -> Any | None:
        path = self.path / "transitions.npz"
        return np.load(path) if path.is_file() else None

    def engagement(self) -> pd.Series:
        return pd.read_parquet(self.path / "sequence_labels.parquet")["engage"]
