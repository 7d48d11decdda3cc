"""Two configurations trained on the same data version and split over several seeds: the evidence
for a default. Per arm: test and validation NDCG@10 per seed; between arms: the per-user test
NDCG@10 difference (each user's mean over seeds), its bootstrap 95% CI, and the paired t-test over
the seed means. Training and evaluation go through the pipeline's own train/evaluate stages with
the pipeline's defaults plus each arm's `--set` overrides (flows/config.py syntax).

Usage:
  python benchmarks/paired_runs.py --data .seqrec/data/<version> --a "" \
      --b "views.user_activity=false" --seeds 0 1 2 --out bench-out/user-activity
Runs are kept under <out>/../runs/<data version>-<hash of the overrides>/seed<N>/ and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd


def arm_dir(root: Path, data: Path, sets: list[str]) -> Path:
    """Where an arm's runs live: one directory per (data version, overrides), shared by invocations,
    so an arm measured once (e.g. the defaults) is reused by the next comparison."""
    from seqrec.fsutil import stable_hash

    return root / "runs" / f"{data.name}-{stable_hash(sorted(sets), n=10)}"


def run_arm(data: Path, sets: list[str], seed: int, root: Path) -> dict:
    from flows.config import load_config
    from tasks.features import build_views
    from tasks.train import evaluate, resolve_exclude_seen, train

    run = arm_dir(root, data, sets) / f"seed{seed}"
    done = run / "result.json"
    if done.is_file():
        r = json.loads(done.read_text())
        r["per_user"] = pd.read_parquet(run / "per_user_test_metrics.parquet").set_index("user_id")["model.ndcg@10"]
        return r
    cfg = load_config(None, sets)
    ecfg, protocol = resolve_exclude_seen(data, cfg.eval)
    views = build_views(data, cfg.views, root / "cache")
    shutil.rmtree(run, ignore_errors=True)  # never resume an unfinished run's checkpoint
    t = time.perf_counter()
    tr = train(data, views, cfg.model, cfg.train.model_copy(update={"progress": False}), seed, run,
               log=lambda m: None, exclude_seen=ecfg.exclude_seen, item_chunk=ecfg.item_chunk)
    ev = evaluate(data, views, cfg.model, cfg.train, ecfg, Path(tr["model_path"]), run)
    r = {"seed": seed, "sets": sets, "test": ev["test"]["ndcg@10"], "test_hr": ev["test"]["hr@10"],
         "val": tr["best_validation_ndcg@10"],
         "epochs": tr["epochs_run"], "train_s": tr["train_seconds"], "wall_s": round(time.perf_counter() - t, 1),
         "exclude_seen": protocol["exclude_seen"],
         "baselines": {k: v["test"]["ndcg@10"] for k, v in ev["baselines"].items()}}
    done.write_text(json.dumps(r, indent=2))
    r["per_user"] = pd.read_parquet(ev["per_user_metrics"]).set_index("user_id")["model.ndcg@10"]
    return r


def compare(a: list[dict], b: list[dict], seed: int = 0) -> dict:
    """The A/B's paired statistics (tasks.ab.paired_stats) on each user's mean over seeds, plus a
    paired t-test over the seed means."""
    from scipy import stats

    from tasks.ab import ABConfig, paired_stats

    ua = pd.concat([r["per_user"] for r in a], axis=1).mean(1)
    ub = pd.concat([r["per_user"] for r in b], axis=1).mean(1).reindex(ua.index)
    s = paired_stats(ub.to_numpy(), ua.to_numpy(), ABConfig(n_bootstrap=10_000), seed)
    ta, tb = np.array([r["test"] for r in a]), np.array([r["test"] for r in b])
    p_seeds = float(stats.ttest_rel(tb, ta).pvalue) if len(ta) > 1 and np.any(ta != tb) else 1.0
    return {"b_minus_a": s["lift"], "ci95": [s["ci_low"], s["ci_high"]], "users": s["n_users"],
            "seed_means": {"a": float(ta.mean()), "b": float(tb.mean())}, "paired_t_over_seeds_p": p_seeds,
            "better_users": s["shares"]["better"], "worse_users": s["shares"]["worse"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="a data version directory")
    ap.add_argument("--a", default="", help="arm A overrides, comma-separated key=value (empty: the defaults)")
    ap.add_argument("--b", required=True, help="arm B overrides, comma-separated key=value")
    ap.add_argument("--common", default="", help="overrides for both arms")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="bench-out/paired")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    arms = {"a": split(args.common) + split(args.a), "b": split(args.common) + split(args.b)}
    results: dict[str, list[dict]] = {"a": [], "b": []}
    for seed in args.seeds:  # interleaved: machine load falls on both arms alike
        for arm, sets in arms.items():
            r = run_arm(data, sets, seed, out.parent)
            results[arm].append(r)
            print(json.dumps({"arm": arm, "sets": sets, **{k: v for k, v in r.items() if k != "per_user"}}),
                  flush=True)
    summary = {"data": str(data), "arms": arms, "seeds": args.seeds,
               "runs": {k: [{x: y for x, y in r.items() if x != "per_user"} for r in v] for k, v in results.items()},
               "comparison": compare(results["a"], results["b"])}
    (out / "paired_runs.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["comparison"]), flush=True)


if __name__ == "__main__":
    main()
