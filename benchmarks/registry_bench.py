"""Tracking / registration / A/B cost per run and batch-scoring throughput on ml-100k.

Runs the real CLI into one fresh work directory:
  1. `seqrec run` with the default config      (first run: A/B against the baseline; should promote)
  2. `seqrec run --set train.epochs=1`         (a worse challenger: registered, not promoted)
  3. `seqrec run --set train.epochs=1 --seed 1` (another one; a third timing sample)
then times `Scorer.score_all` (all users, in process; median of repeats) and `seqrec score` (CLI,
including loading the model from the registry).

    python benchmarks/registry_bench.py --workdir /tmp/rb --out bench-out/registry.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SEQREC = str(Path(sys.executable).with_name("seqrec"))
RUNS = [("default", []), ("worse: 1 epoch", ["--set", "train.epochs=1"]),
        ("worse: 1 epoch, seed 1", ["--set", "train.epochs=1", "--set", "seed=1"])]


def run_flow(wd: Path, name: str, extra: list[str]) -> dict:
    out = wd.parent / f"summary-{len(list(wd.parent.glob('summary-*.json')))}.json"
    res = subprocess.run([SEQREC, "run", "--workdir", str(wd), "--summary-json", str(out), *extra],
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{name}: seqrec run failed\n{res.stderr[-4000:]}")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True, help="must not exist")
    ap.add_argument("--out", type=Path, default=Path("bench-out/registry.json"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.workdir.exists():
        sys.exit(f"{args.workdir} exists; give a fresh directory")
    args.workdir.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, extra in RUNS:
        s = run_flow(args.workdir, name, extra)
        t = s["timings_s"]
        rows.append({"run": name, "version": s["model"]["version"], "test_ndcg@10": s["metrics"]["test"]["ndcg@10"],
                     "baseline": s["ab"]["baseline"], "decision": s["ab"]["decision"], "lift": s["ab"]["lift"],
                     "ci": [s["ab"]["ci_low"], s["ab"]["ci_high"]], "p_value": s["ab"]["p_value"],
                     "promoted": s["promoted"], "champion": s["champion"],
                     "register_s": t["register"], "compare_s": t["compare"], "promote_s": t["promote"],
                     "registry_total_s": round(t["register"] + t["compare"] + t["promote"], 3),
                     "flow_total_s": t["total"], "latency": s["ab"]["latency"]})
        print(json.dumps(rows[-1]), flush=True)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tasks.bundle import Scorer
    from tasks.registry import open_registry
    from tasks.tracking import TrackingConfig, bundle_of

    import tempfile

    import torch

    torch.set_num_threads(2)
    reg = open_registry(TrackingConfig(), args.workdir)
    with tempfile.TemporaryDirectory() as tmp:
        sc = Scorer(bundle_of(reg.client, reg.name, reg.champion(), Path(tmp)))
        sc.score_all(10)  # warm-up
        speeds = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            n = sc.score_all(10)["user_id"].nunique()
            speeds.append(n / (time.perf_counter() - t))
    t = time.perf_counter()
    res = subprocess.run([SEQREC, "score", "--workdir", str(args.workdir), "--out", str(args.workdir / "scores.parquet")],
                         capture_output=True, text=True)
    cli_s = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(res.stderr[-3000:])
    result = {"runs": rows, "score_all": {"users": int(n), "users_per_s_median": statistics.median(speeds),
                                          "users_per_s": speeds},
              "score_cli": {"wall_s": round(cli_s, 2), "stdout": res.stdout.strip()},
              "registry_total_s_median": statistics.median(r["registry_total_s"] for r in rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
