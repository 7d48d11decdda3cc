"""The headline table as users get it: `seqrec run --until evaluate` per data set and protocol, then
test NDCG@10 / HR@10 / MRR@10 / coverage@10 of the model, Pop and Markov from each run summary, and
the paired lift of the model over Markov with its bootstrap 95% CI (the A/B's statistics).

Usage: python benchmarks/headline.py --out bench-out/headline [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

SYNTH = ["data.source=synthetic", "data.synthetic.start_days=0"]  # users active over one period: both protocols
RUNS: dict[str, list[str]] = {
    "ml-100k, loo, seen excluded (default)": [],
    "ml-100k, loo, seen kept (RecBole's protocol)": ["eval.exclude_seen=false"],
    # ml-100k users rate in bursts: a cut-off at 0.9 of the events leaves 90 users on both sides, 0.8 leaves 109
    "ml-100k, temporal (cut-off 0.8)": ["eval.protocol=temporal", "eval.cutoff=0.8"],
    "synthetic, loo": SYNTH,
    "synthetic, temporal (cut-off 0.9)": [*SYNTH, "eval.protocol=temporal"],
}
METRICS = ("ndcg@10", "hr@10", "mrr@10", "coverage@10")


def run(name: str, sets: list[str], out: Path) -> dict:
    from seqrec.fsutil import stable_hash

    wd = out / "wd"  # one work directory: data versions and views are shared where they can be
    summary = out / f"{name.split(',')[0]}-{stable_hash(sets, n=10)}.json"  # kept: a rerun only renders
    if not summary.is_file():
        cmd = [str(Path(sys.executable).with_name("seqrec")), "run", "--workdir", str(wd), "--until", "evaluate",
               "--summary-json", str(summary)] + [a for s in sets for a in ("--set", s)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return json.loads(summary.read_text())


def lift(s: dict, baseline: str = "markov") -> dict:
    """The A/B's paired statistics (tasks.ab.paired_stats) of the model against a baseline."""
    from tasks.ab import ABConfig, paired_stats

    per = pd.read_parquet(s["per_user_metrics"])
    st = paired_stats(per["model.ndcg@10"].to_numpy(), per[f"{baseline}.ndcg@10"].to_numpy(), ABConfig(), 0)
    return {"lift": st["lift"], "ci": [st["ci_low"], st["ci_high"]], "users": st["n_users"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-out/headline")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| data, protocol | test users | model NDCG@10 | HR@10 | MRR@10 | cov@10 | Pop NDCG@10 | Markov NDCG@10 "
             "| model - Markov [95% CI] | seen excluded | train s |", "|" + "---|" * 11]
    rows = []
    for name, sets in RUNS.items():
        if args.only and name not in args.only:
            continue
        s = run(name, sets, out)
        m, b = s["metrics"]["test"], s["baselines"]
        lf = lift(s)
        rows.append({"name": name, "sets": sets, "test": m, "baselines": {k: v["test"] for k, v in b.items()},
                     "lift_vs_markov": lf, "eval_protocol": s["eval_protocol"],
                     "train_s": s["training"]["train_seconds"], "data_version": s["data_version"]})
        lines.append(f"| {name} | {m['users']} | **{m['ndcg@10']:.4f}** | {m['hr@10']:.4f} | {m['mrr@10']:.4f} | "
                     f"{m['coverage@10']:.3f} | {b['pop']['test']['ndcg@10']:.4f} | {b['markov']['test']['ndcg@10']:.4f} | "
                     f"{lf['lift']:+.4f} [{lf['ci'][0]:+.4f}, {lf['ci'][1]:+.4f}] | "
                     f"{str(s['eval_protocol']['exclude_seen']).lower()} | {s['training']['train_seconds']:.0f} |")
    (out / "headline.json").write_text(json.dumps(rows, indent=2))
    (out / "headline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
