"""Preprocessing benchmark: the Dask pipeline vs the single-process pandas reference.

Each measurement runs in a fresh subprocess; peak RSS is the maximum over time of the summed RSS of
that process and all its children (Dask workers included), sampled every 50 ms with psutil.
Usage: python benchmarks/preprocess_bench.py --sizes 1000000 10000000 [--repeat 1] [--out bench-out]
       python benchmarks/preprocess_bench.py --sizes 100000000 --methods dask+gx   # + both GX gates
Method `dask+gx` also runs the raw and processed data-quality gates (per piece / per part on the
cluster, merged) and reports each stage's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.proctree import run_tree  # noqa: E402

CHILD = r"""
import json, sys, time, shutil
from pathlib import Path
method, data, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
from tasks.sources import DataConfig, resolve_inputs
from tasks.preprocess import PreprocessConfig
from validation.config import ValidationConfig
inputs = resolve_inputs(DataConfig(source="files", events=data + "/events"))
pcfg, vcfg = PreprocessConfig(), ValidationConfig()
t = time.perf_counter()
stages = {}
if method in ("dask", "dask+gx"):
    from tasks.dask_cluster import DaskConfig, dask_client
    from tasks.preprocess import preprocess
    from tasks.validate import validate_processed, validate_raw
    with dask_client(DaskConfig(), work) as client:
        t = time.perf_counter()
        if method == "dask+gx":
            raw = validate_raw(inputs, vcfg, client, work / "run")
            stages["validate_raw"] = round(time.perf_counter() - t, 2)
        t1 = time.perf_counter()
        res = preprocess(inputs, pcfg, vcfg, client, work)
        stages["preprocess"] = round(time.perf_counter() - t1, 2)
        events = res.counts["events"]
        if method == "dask+gx":
            t1 = time.perf_counter()
            validate_processed(res, vcfg, raw, work / "run", client)
            stages["validate_processed"] = round(time.perf_counter() - t1, 2)
    shutil.rmtree(res.staging_path, ignore_errors=True)
    shutil.rmtree(res.path, ignore_errors=True)
else:
    from benchmarks.pandas_reference import reference_sequences
    out = reference_sequences(inputs, pcfg, vcfg)
    events = int(out["n_events"].sum())
print(json.dumps({"seconds": time.perf_counter() - t, "events": events, "stages": stages}))
"""


def measure(method: str, data: Path, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    out, wall, peak_gb = run_tree([sys.executable, "-c", CHILD, method, str(data), str(work)], dict(os.environ))
    res = json.loads(out.strip().splitlines()[-1])
    return {"method": method, "stage_s": round(res["seconds"], 2), "process_s": round(wall, 2),
            "peak_rss_gb": round(peak_gb, 3), "events": res["events"], "stages": res["stages"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--methods", nargs="+", default=["dask", "pandas"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()
    from tasks.synthetic import generate

    out = Path(args.out)
    rows = []
    for n in args.sizes:
        data = out / f"synth-{n}"
        if not (data / "MANIFEST.json").is_file():
            t = time.perf_counter()
            generate(max(1000, n // 100), max(500, n // 1000), n, 0, data)
            print(f"generated {n} events in {time.perf_counter() - t:.1f}s", flush=True)
        for r in range(args.repeat):
            for m in args.methods:
                row = {"events_in": n, "repeat": r, **measure(m, data, out / f"work-{m}-{n}-{r}")}
                rows.append(row)
                print(json.dumps(row), flush=True)
    (out / "preprocess_bench.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
