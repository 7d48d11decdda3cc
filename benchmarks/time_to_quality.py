"""Time to quality: best validation NDCG@10 reached within N seconds of training, per seed.

Default model and protocol of the RecBole anchor (exclude_seen=false). Reports each seed and the
median; the anchor is RecBole GRU4Rec's best validation NDCG@10 (0.0736, after 794 s).
Usage: python benchmarks/time_to_quality.py --data .seqrec/data/<version> [--seconds 40] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from models.net import ModelConfig
from models.train import TrainConfig
from tasks.features import ViewsConfig, build_views
from tasks.train import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=None, help="override train.lr")
    ap.add_argument("--warmup", type=float, default=TrainConfig().warmup_epochs, help="train.warmup_epochs")
    ap.add_argument("--no-repeat-bias", action="store_true", help="model.repeat_bias=false (the ablation)")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    views = build_views(data, ViewsConfig(), out / "cache")
    rows = []
    for seed in args.seeds:
        run = out / "ttq" / f"seed{seed}"
        shutil.rmtree(run, ignore_errors=True)
        tcfg = TrainConfig(epochs=200, patience=200, max_seconds=args.seconds, progress=False, warmup_epochs=args.warmup,
                           **({"lr": args.lr} if args.lr else {}))
        tr = train(data, views, ModelConfig(repeat_bias=not args.no_repeat_bias), tcfg, seed, run, log=lambda m: None,
                   exclude_seen=False)
        within = [h for h in tr["history"] if h["elapsed_s"] <= args.seconds]
        best = max(within, key=lambda h: h["validation"]["ndcg@10"])
        first = next((h for h in within if h["validation"]["ndcg@10"] >= 0.0736), None)
        rows.append({"seed": seed, "best_val_ndcg@10": round(best["validation"]["ndcg@10"], 4),
                     "at_s": best["elapsed_s"], "epochs_within": len(within),
                     "first_reached_0.0736_at_s": first["elapsed_s"] if first else None})
        print(json.dumps(rows[-1]), flush=True)
    summary = {"seconds": args.seconds, "repeat_bias": not args.no_repeat_bias, "median_best_val_ndcg@10": statistics.median(r["best_val_ndcg@10"] for r in rows),
               "seeds_reaching_0.0736": sum(r["first_reached_0.0736_at_s"] is not None for r in rows), "runs": rows}
    print(json.dumps(summary))
    (out / f"time_to_quality{'-no-repeat-bias' if args.no_repeat_bias else ''}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
