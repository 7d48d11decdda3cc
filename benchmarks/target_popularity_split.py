"""Two benchmark runs' per-user test NDCG@10 compared by how often each user's test target occurs
in the training events (where does a view help: rare or popular targets?).

Usage: python benchmarks/target_popularity_split.py --data <data version dir> \
           --a bench-out/runs/excl-multi-view_lstm_gated_(default) --b bench-out/runs/excl-ablation_no_item_view
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.model_bench import paired_ci  # noqa: E402
from seqrec.catalog import DataVersion  # noqa: E402

EDGES = (0, 20, 100, 250, None)


def test_target_counts(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """User ids (in the evaluation's order: users with a test event) and their test target's count
    among all training events."""
    seq = DataVersion(data).sequences()
    items = [np.asarray(s) for s in seq["items"]]
    n_train = seq["n_train"].to_numpy()
    keep = np.flatnonzero(np.array([len(s) for s in items]) >= 3)
    counts = np.bincount(np.concatenate([s[:n] for s, n in zip(items, n_train)]),
                         minlength=max(int(s.max()) for s in items if len(s)) + 1)
    return seq["user_id"].to_numpy()[keep], counts[[items[i][n_train[i] + 1] for i in keep]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--a", required=True, help="run directory with per_user_test_metrics.parquet")
    ap.add_argument("--b", required=True)
    args = ap.parse_args()
    users, counts = test_target_counts(Path(args.data))
    a, b = (pd.read_parquet(Path(r) / "per_user_test_metrics.parquet") for r in (args.a, args.b))
    if not (np.array_equal(a["user_id"], users) and np.array_equal(b["user_id"], users)):
        raise SystemExit("the runs were not evaluated on this data version's test users")
    x, y = a["model.ndcg@10"].to_numpy(), b["model.ndcg@10"].to_numpy()
    print(f"| test target's training count | users | {Path(args.a).name} | {Path(args.b).name} | lift | 95% CI |")
    print("|---|---|---|---|---|---|")
    for lo, hi in [(None, None), *zip(EDGES[:-1], EDGES[1:])]:
        m = np.ones(len(x), bool) if lo is None else (counts >= lo) & (counts < (hi if hi is not None else np.inf))
        c = paired_ci(x[m], y[m])
        label = "all" if lo is None else f"[{lo}, {hi if hi is not None else '∞'})"
        print(f"| {label} | {int(m.sum())} | {x[m].mean():.4f} | {y[m].mean():.4f} | {c['mean_diff']:+.4f} | "
              f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] |")


if __name__ == "__main__":
    main()
