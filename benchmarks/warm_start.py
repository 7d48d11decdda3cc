"""Warm start vs cold start on the data of the next period, side by side, several seeds.

ml-100k cut into weekly partitions (benchmarks/replay.py); `seqrec run` on the partitions up to
`--first` makes the champion; then, on the partitions up to `--second`, each arm trains and is
evaluated (`--until evaluate`: nothing registered, the champion stays the same for every arm):
  cold        train.init_from=none (the default schedule: warm-up to lr 1e-2, cosine)
  warm        train.init_from=champion, the same schedule
  warm-tuned  train.init_from=champion with the warm-start schedule under test (--tuned)
Per arm and seed: test NDCG@10, HR@10, training seconds, epochs; per warm arm the paired
difference against cold (per-user NDCG@10 averaged over the seeds, bootstrap CI:
tasks.ab.paired_stats, the gate's statistics).

    python benchmarks/warm_start.py --workdir /tmp/ws --out bench-out/warm_start.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SEQREC = str(Path(sys.executable).with_name("seqrec"))


def run(wd: Path, cfg: Path, sets: list[str], out: Path, until: str | None = None) -> dict:
    cmd = [SEQREC, "run", "--workdir", str(wd), "--config", str(cfg), "--summary-json", str(out)]
    for s in sets:
        cmd += ["--set", s]
    if until:
        cmd += ["--until", until]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)}\n{res.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True, help="must not exist")
    ap.add_argument("--out", type=Path, default=Path("bench-out/warm_start.json"))
    ap.add_argument("--first", default="1998-02-09")
    ap.add_argument("--second", default="1998-03-02")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tuned", default="train.lr=0.001,train.warmup_epochs=0",
                    help="comma-separated overrides of the warm-tuned arm")
    args = ap.parse_args()
    wd = args.workdir.resolve()
    if wd.exists():
        sys.exit(f"{wd} exists")
    from benchmarks.replay import partition
    from tasks.ab import ABConfig, paired_stats
    from tasks.sources import ML100K_SCHEMA, DataConfig, resolve_inputs

    import yaml

    src = Path(resolve_inputs(DataConfig()).events[0]).parent
    data = wd.parent / f"{wd.name}-events"
    partition(src, data)
    cfg = {"data": {"source": "files", "events": str(data / "events"), "users": str(data / "users.parquet"),
                    "items": str(data / "items.parquet"), "schema": ML100K_SCHEMA.model_dump()},
           "train": {"progress": False}}
    wd.mkdir(parents=True)
    cfg_path = wd.parent / f"{wd.name}-config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    first = run(wd, cfg_path, [f"data.until={args.first}"], wd.parent / "first.json")
    print(f"champion: v{first['champion']} on data until {args.first}, test ndcg@10 "
          f"{first['metrics']['test']['ndcg@10']:.4f}", flush=True)
    arms = {"cold": ["train.init_from=none"], "warm": ["train.init_from=champion"],
            "warm-tuned": ["train.init_from=champion", *args.tuned.split(",")]}
    rows, per_user = [], {}
    for seed in range(args.seeds):
        for arm, sets in arms.items():
            out = wd.parent / f"{arm}-{seed}.json"
            s = run(wd, cfg_path, [f"data.until={args.second}", f"seed={seed}", *sets], out, until="evaluate")
            pu = pd.read_parquet(Path(s["run_dir"]) / "per_user_test_metrics.parquet").set_index("user_id")
            per_user.setdefault(arm, []).append(pu["model.ndcg@10"])
            t = s["training"]
            rows.append({"arm": arm, "seed": seed, "test_ndcg@10": s["metrics"]["test"]["ndcg@10"],
                         "test_hr@10": s["metrics"]["test"]["hr@10"], "train_s": t["train_seconds"],
                         "epochs": t["epochs_run"], "best_epoch": t["best_epoch"],
                         "warm_from": (t.get("warm_start") or {}).get("from")})
            print(json.dumps(rows[-1]), flush=True)
    mean = {a: pd.concat(v, axis=1).mean(axis=1) for a, v in per_user.items()}
    pairs = {}
    for arm in ("warm", "warm-tuned"):
        users = mean["cold"].index.intersection(mean[arm].index)
        st = paired_stats(mean[arm][users].to_numpy(), mean["cold"][users].to_numpy(), ABConfig(), 0)
        pairs[f"{arm} - cold"] = {k: st[k] for k in ("n_users", "lift", "ci_low", "ci_high", "p_value")}
        print(arm, "- cold:", pairs[f"{arm} - cold"], flush=True)
    summary = {a: {"test_ndcg@10": float(np.mean([r["test_ndcg@10"] for r in rows if r["arm"] == a])),
                   "train_s_median": float(np.median([r["train_s"] for r in rows if r["arm"] == a])),
                   "epochs_median": float(np.median([r["epochs"] for r in rows if r["arm"] == a]))} for a in arms}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"first": args.first, "second": args.second, "tuned": args.tuned, "rows": rows,
                                    "summary": summary, "paired": pairs}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
