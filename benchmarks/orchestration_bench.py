"""Orchestration overhead and cold vs cached re-run on ml-100k.

Runs the training flow twice into one fresh work directory (in this process, ephemeral Prefect
server as `seqrec run` uses): cold, then unchanged (preprocess + features cached). For each run:
the flow run's wall time from the Prefect API (start -> end), the total measured inside the flow,
and the sum of the stage times; overhead = 1 - sum(stages) / flow wall time.

    python benchmarks/orchestration_bench.py --workdir /tmp/ob/wd --out bench-out/orchestration.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


async def _flow_run(run_id: str):
    from prefect.client.orchestration import get_client

    async with get_client() as c:
        return await c.read_flow_run(run_id)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True, help="must not exist")
    ap.add_argument("--out", type=Path, default=Path("bench-out/orchestration.json"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    if args.workdir.exists():
        sys.exit(f"{args.workdir} exists; give a fresh directory")
    from flows.config import load_config
    from flows.training import training_flow

    cfg = load_config(None, args.overrides)
    rows = []
    for name in ("cold", "cached re-run"):
        t = time.perf_counter()
        state = training_flow(config=cfg, workdir=str(args.workdir), return_state=True)
        outer = time.perf_counter() - t
        s = state.result()
        fr = asyncio.run(_flow_run(s["prefect"]["flow_run_id"]))
        wall = (fr.end_time - fr.start_time).total_seconds()
        stages = {k: v for k, v in s["timings_s"].items() if k != "total"}
        rows.append({"run": name, "flow_run_wall_s": round(wall, 2), "inside_flow_total_s": s["timings_s"]["total"],
                     "sum_of_stages_s": round(sum(stages.values()), 2), "call_wall_s": round(outer, 2),
                     "overhead_vs_flow_run": round(1 - sum(stages.values()) / wall, 4), "stages": stages,
                     "data_reused": s["data_reused"], "views_reused": s["views_reused"],
                     "promoted": s.get("promoted")})
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
