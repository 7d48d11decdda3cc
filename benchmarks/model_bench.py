"""Model benchmark on a preprocessed data version (default: ml-100k via `seqrec run --until preprocess`).

Every configuration trains under the same wall-time budget and is selected on validation NDCG@10
under the protocol being reported; the test split is scored once. Multi-view multi-task vs
single-view single-task: paired per-user differences of test NDCG@10, bootstrap 95% CI (scipy) and
a Wilcoxon signed-rank test.

Usage: python benchmarks/model_bench.py --data .seqrec/data/<version> [--budget 60] [--out bench-out]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from models.net import ModelConfig
from models.train import TrainConfig
from tasks.features import ViewsConfig, build_views
from tasks.train import EvalConfig, evaluate, train

SINGLE = {"item_view": False, "user_view": False, "attr_task": False, "engage_task": False}
CONFIGS: dict[str, dict] = {
    "single-view single-task lstm": {"encoder": "lstm", **SINGLE},
    "single-view single-task transformer": {"encoder": "transformer", "layers": 2, **SINGLE},
    "multi-view lstm gated (default)": {},
    "multi-view lstm concat": {"fusion": "concat"},
    "multi-view lstm sum": {"fusion": "sum"},
    "multi-view transformer gated": {"encoder": "transformer", "layers": 2},
    "multi-view transformer concat": {"encoder": "transformer", "layers": 2, "fusion": "concat"},
    "multi-view transformer sum": {"encoder": "transformer", "layers": 2, "fusion": "sum"},
    "multi-view hybrid gated": {"encoder": "hybrid"},
    "ablation: no item view": {"item_view": False},
    "ablation: no user view": {"user_view": False},
    "ablation: no auxiliary tasks": {"attr_task": False, "engage_task": False},
    "ablation: no repeat bias": {"repeat_bias": False},
    "multi-view lstm gated, mixture of 4 softmaxes": {"mixtures": 4},
    "multi-view lstm gated + transition mixture (2 lags)": {"transition_lags": 2},
}
BASELINE, CANDIDATE = "single-view single-task lstm", "multi-view lstm gated (default)"


def paired_ci(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    from scipy import stats

    d = a - b
    ci = stats.bootstrap((d,), np.mean, n_resamples=10_000, confidence_level=0.95, random_state=seed).confidence_interval
    p = float(stats.wilcoxon(a, b).pvalue) if np.any(d != 0) else 1.0
    return {"mean_diff": float(d.mean()), "ci95": [float(ci.low), float(ci.high)], "wilcoxon_p": p, "users": int(len(d))}


METRICS = ("ndcg@10", "hr@10", "mrr@10", "coverage@10")


def render_markdown(rows: list[dict]) -> str:
    """The BENCHMARKS.md table: one row per model, both protocols side by side, then the CI."""
    models = list(dict.fromkeys(r["model"] for r in rows if "model" in r))
    by = {(r["exclude_seen"], r["model"]): r for r in rows if "model" in r}
    head = ("| model | " + " | ".join(f"{m} (excl. seen)" for m in METRICS) + " | "
            + " | ".join(f"{m} (RecBole protocol)" for m in METRICS) + " |")
    lines = [head, "|" + "---|" * (1 + 2 * len(METRICS))]
    for m in models:
        cells = [f"{by[(e, m)][k]:.4f}" if (e, m) in by else "" for e in (True, False) for k in METRICS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "| protocol | candidate vs baseline | mean lift | 95% CI | Wilcoxon p | users |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "comparison" in r:
            c = r["comparison"]
            lines.append(f"| exclude_seen={str(c['exclude_seen']).lower()} | {c['candidate']} vs {c['baseline']} | "
                         f"{c['mean_diff']:+.4f} | [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {c['wilcoxon_p']:.3g} | {c['users']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--render", help="only print the markdown table of an earlier model_bench.json")
    ap.add_argument("--data")
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per configuration")
    ap.add_argument("--exclude-seen", choices=["true", "false", "both"], default="both")
    ap.add_argument("--only", nargs="*", help="subset of configuration names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=float, default=TrainConfig().warmup_epochs, help="train.warmup_epochs")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()
    if args.render:
        print(render_markdown(json.loads(Path(args.render).read_text())), end="")
        return
    if not args.data:
        ap.error("--data is required")
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lags = max(c.get("transition_lags", 0) for c in CONFIGS.values())
    views = build_views(data, ViewsConfig(transition_lags=lags), out / "cache")
    settings = [True, False] if args.exclude_seen == "both" else [args.exclude_seen == "true"]
    rows, per_user = [], {}
    for excl in settings:
        for name, over in CONFIGS.items():
            if args.only and name not in args.only:
                continue
            mcfg = ModelConfig(**over)
            tcfg = TrainConfig(epochs=200, patience=10, max_seconds=args.budget, progress=False,
                               warmup_epochs=args.warmup)
            run = out / "runs" / f"{'excl' if excl else 'noexcl'}-{name.replace(' ', '_').replace(':', '')}"
            shutil.rmtree(run, ignore_errors=True)  # never resume a previous benchmark's checkpoint
            t = time.perf_counter()
            tr = train(data, views, mcfg, tcfg, args.seed, run, log=lambda m: None, exclude_seen=excl)
            ev = evaluate(data, views, mcfg, tcfg, EvalConfig(exclude_seen=excl), Path(tr["model_path"]), run)
            per = pd.read_parquet(ev["per_user_metrics"])
            per_user[(excl, name)] = per["model.ndcg@10"].to_numpy()
            row = {"exclude_seen": excl, "model": name, **{k: round(ev["test"][k], 4) for k in
                   ("ndcg@10", "hr@10", "mrr@10", "coverage@10")},
                   "val_ndcg@10": round(tr["best_validation_ndcg@10"], 4), "epochs": tr["epochs_run"],
                   "train_s": tr["train_seconds"], "wall_s": round(time.perf_counter() - t, 1)}
            if name == CANDIDATE:
                row["aux"] = ev["aux"]["test"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            for b in ("pop", "markov"):  # the same users every time: record each baseline once per setting
                if (excl, b) not in per_user:
                    rows.append({"exclude_seen": excl, "model": b, **{k: round(ev["baselines"][b]["test"][k], 4)
                                 for k in ("ndcg@10", "hr@10", "mrr@10", "coverage@10")}})
                    per_user[(excl, b)] = per[f"{b}.ndcg@10"].to_numpy()
        if (excl, BASELINE) in per_user and (excl, CANDIDATE) in per_user:
            cmp = {"exclude_seen": excl, "candidate": CANDIDATE, "baseline": BASELINE,
                   **paired_ci(per_user[(excl, CANDIDATE)], per_user[(excl, BASELINE)], args.seed)}
            rows.append({"comparison": cmp})
            print(json.dumps(cmp), flush=True)
    (out / "model_bench.json").write_text(json.dumps(rows, indent=2))
    (out / "model_bench.md").write_text(render_markdown(rows))


if __name__ == "__main__":
    main()
