"""Which events train, validate and test: the evaluation protocol as per-event split codes; numpy only.

Preprocessing writes the codes into each user's sequence (column `split`), the processed-data gate
checks them, and every consumer reads targets from them (models/data.eval_inputs, the A/B
re-score). Training and the views use each user's first `n_train` events, always a prefix.

- `loo` (leave-one-out): a user with 3+ events validates on the second-to-last and tests on the
  last; everything before trains. One user's test event may precede other users' training events.
- `temporal`: two global cut-offs T_valid < T_test. Events before T_valid train; the first event
  in [T_valid, T_test) is the validation target (its history: the training events); the first
  `next_events` events at or after T_test are test targets, each with every event before it as its
  history (a user's metric is the mean over them). Nothing a model is tested on happened before
  anything it trained on, as in a scheduled retrain judged on the period after its data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAIN, VALID, TEST = 0, 1, 2
CONTEXT = 3  # before T_test, after the validation target: test history, never trained on or predicted
LATER = 4    # after the test target: not used in evaluation (serving still sees it)


@dataclass(frozen=True)
class Cutoffs:
    """Temporal cut-offs in unix seconds (None: leave-one-out)."""

    valid: int
    test: int
    next_events: int = 1  # test targets per user: the first this many events at or after `test`


def split_codes(lengths: np.ndarray, ts: np.ndarray, cuts: Cutoffs | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-event split codes and per-user n_train for users laid end to end (`lengths` events each,
    time-ordered within a user)."""
    lengths = np.asarray(lengths, np.int64)
    n = int(lengths.sum())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    pos = np.arange(n) - np.repeat(starts, lengths)  # position within the user
    codes = np.zeros(n, np.int8)
    if cuts is None:
        eligible = np.repeat(lengths >= 3, lengths)
        from_end = np.repeat(lengths, lengths) - 1 - pos
        codes[eligible & (from_end == 1)] = VALID
        codes[eligible & (from_end == 0)] = TEST
        return codes, np.where(lengths >= 3, lengths - 2, lengths).astype(np.int32)
    ts = np.asarray(ts, np.int64)
    user = np.repeat(np.arange(len(lengths)), lengths)
    n_train = np.bincount(user[ts < cuts.valid], minlength=len(lengths)).astype(np.int64)
    n_before = np.bincount(user[ts < cuts.test], minlength=len(lengths)).astype(np.int64)
    u_train, u_before = np.repeat(n_train, lengths), np.repeat(n_before, lengths)
    codes[(pos >= u_train) & (pos < u_before)] = CONTEXT
    codes[pos > u_before] = LATER
    codes[pos == u_before] = LATER
    # a target needs a history: validation after >= 1 training event, test after >= 1 earlier event
    codes[(pos == u_train) & (pos < u_before) & (u_train >= 1)] = VALID
    codes[(pos >= u_before) & (pos < u_before + cuts.next_events) & (u_before >= 1)] = TEST
    return codes, n_train.astype(np.int32)


def targets(codes: list[np.ndarray] | np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray]:
    """Every `code` event: (user row, position in the user's sequence), in user order."""
    lengths = np.array([len(c) for c in codes], np.int64)
    flat = np.concatenate([np.asarray(c) for c in codes]) if len(codes) else np.zeros(0, np.int8)
    at = np.flatnonzero(flat == code)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = np.searchsorted(starts, at, side="right") - 1
    return rows.astype(np.int64), (at - starts[rows]).astype(np.int64)


def resolve_cutoff(value: float | int | str, timestamps: np.ndarray) -> int:
    """A cut-off as configured -> unix seconds: a fraction in (0, 1) is the share of events before it
    (a quantile of the event times), a number >= 1 is unix seconds, a string an ISO date (UTC)."""
    if isinstance(value, str):
        try:
            return resolve_cutoff(float(value), timestamps)
        except ValueError:
            pass
        import pandas as pd

        stamp = pd.Timestamp(value)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return int(stamp.value // 10**9)
    if 0 < value < 1:
        ts = np.sort(np.asarray(timestamps, np.int64))
        if not len(ts):
            raise ValueError("no events to place a cut-off in")
        return int(ts[min(len(ts) - 1, int(np.floor(value * len(ts))))])
    if value >= 1:
        return int(value)
    raise ValueError(f"cut-off {value!r}: give a fraction in (0, 1), unix seconds or an ISO date")
