"""Index conventions shared by preprocessing (writes them) and serving (reads them); numpy only.

Items: 0 = padding, 1 = unknown item, real items from 2. Users: 0 = unknown user. Gap buckets:
0 = padding, 1 = first event of a user, then one bucket per configured edge.
"""

from __future__ import annotations

import numpy as np

ITEM_PAD, ITEM_UNKNOWN, ITEM_FIRST = 0, 1, 2
USER_UNKNOWN = 0
GAP_PAD, GAP_FIRST = 0, 1


def gap_buckets(gaps: np.ndarray, first: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Seconds since the user's previous event -> bucket codes (GAP_FIRST where `first`)."""
    b = (2 + np.searchsorted(np.asarray(edges, np.int64), gaps, side="left")).astype(np.int8)
    b[first] = GAP_FIRST
    return b


def gap_buckets_of(timestamps: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """One user's time-ordered timestamps -> gap bucket per event."""
    ts = np.asarray(timestamps, np.int64)
    gaps = np.zeros(len(ts), np.int64)
    gaps[1:] = ts[1:] - ts[:-1]
    first = np.zeros(len(ts), bool)
    first[:1] = True
    return gap_buckets(gaps, first, edges)


def normalise_label(value: str) -> str:
    """How event types (and every config value compared with them) are normalised: Unicode NFC,
    surrounding whitespace removed, lower case. Config lists and data go through this one function, so
    `preprocess.event_types=[Purchase]` matches the data's `purchase`."""
    import unicodedata

    return unicodedata.normalize("NFC", str(value)).strip().lower()


def normalise_labels(values: list[str] | None) -> list[str] | None:
    """A config list normalised like the data, duplicates removed, order kept."""
    return None if values is None else list(dict.fromkeys(normalise_label(v) for v in values))
