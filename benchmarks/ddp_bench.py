"""Training at scale on CPU: data-parallel throughput and item-chunked evaluation memory.

1. Training. A synthetic data version with about 100k items (default: 10k users, 130k generated
   items of which ~100k occur, 500k events), trained with sampled softmax (model.next_loss=sampled)
   as 1 process x 1 thread, 1 process x 2 threads and 2 DDP processes (torchrun, gloo) x 1 thread,
   the same job otherwise (seed, global batch, epochs). Throughput = training windows per second of
   training time (Trainer's train_seconds: validation excluded; rank 0's clock under DDP).
   Validation NDCG@10 is taken once, after the last epoch, so the three compare at equal epochs.
2. Evaluation. evaluate_model on a random-init model without views at 100k and 1M items:
   one pass over the catalogue (item_chunk = n_items) against item chunks; seconds and the peak RSS
   increase during evaluation (sampled every 5 ms inside the process).

Each measurement is its own process tree; peak RSS of a training run is the summed RSS of the
launcher and its workers, sampled every 50 ms.
Usage: python benchmarks/ddp_bench.py [--out bench-out/ddp] [--epochs 2] [--eval-items 100000 1000000]
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

REPO = Path(__file__).resolve().parents[1]

EVAL_CHILD = r"""
import json, sys, threading, time
import numpy as np, psutil, torch
from models.net import ModelConfig, SeqRecNet
from models.train import evaluate_model
n_items, chunk, users = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
torch.manual_seed(0)
rng = np.random.default_rng(0)
net = SeqRecNet(ModelConfig(item_view=False, user_view=False), n_items, 5, 14, None, None, 2).eval()
L = net.cfg.max_len
hist = [rng.integers(2, n_items, rng.integers(3, L + 1)) for _ in range(users)]
seq = np.zeros((users, L), np.int64)
for i, h in enumerate(hist):
    seq[i, L - len(h):] = h
ev = {"rows": np.arange(users), "user": torch.ones(users, dtype=torch.long), "seq": torch.as_tensor(seq),
      "etype": torch.as_tensor((seq > 0).astype(np.int64)), "gap": torch.as_tensor((seq > 0).astype(np.int64)),
      "target": rng.integers(2, n_items, users), "engage": rng.integers(0, 2, users),
      "seen": [np.unique(h) for h in hist], "history": hist}
proc = psutil.Process()
base = proc.memory_info().rss
peak = [base]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.005)
th = threading.Thread(target=sample, daemon=True)
th.start()
t = time.perf_counter()
means, _, _ = evaluate_model(net, ev, True, 512, item_chunk=chunk)
secs = time.perf_counter() - t
done.set(); th.join()
print(json.dumps({"seconds": secs, "rss_before_gb": base / 2**30, "peak_increase_gb": (peak[0] - base) / 2**30,
                  "ndcg@10": means["ndcg@10"], "coverage@10": means["coverage@10"]}))
"""


def prepare(out: Path, users: int, items: int, events: int) -> tuple[Path, Path]:
    """Generate, validate and preprocess a synthetic data version and build its views (reused when present)."""
    marker = out / "data.json"
    if marker.is_file():
        d = json.loads(marker.read_text())
        return Path(d["data"]), Path(d["views"])
    from tasks.dask_cluster import DaskConfig, dask_client
    from tasks.features import ViewsConfig, build_views
    from tasks.preprocess import PreprocessConfig, preprocess
    from tasks.sources import DataConfig, resolve_inputs
    from tasks.synthetic import generate
    from tasks.validate import validate_processed, validate_raw
    from validation.config import ValidationConfig

    t = time.perf_counter()
    generate(users, items, events, 0, out / "synth")
    wd = out / "work"
    with dask_client(DaskConfig(processes=False, n_workers=1, threads_per_worker=2), wd) as client:
        inputs = resolve_inputs(DataConfig(
            source="files", events=str(out / "synth" / "events"), users=str(out / "synth" / "users.parquet"),
            items=str(out / "synth" / "items.parquet"),
            schema={"user_categorical": ["gender", "country"], "user_numeric": ["age"], "item_categorical": ["brand"],
                    "item_multi": ["genres"], "item_numeric": ["price", "year"], "item_text": ["title"]}))
        raw = validate_raw(inputs, ValidationConfig(), client, wd / "run")
        res = preprocess(inputs, PreprocessConfig(), ValidationConfig(), client, wd)
        validate_processed(res, ValidationConfig(), raw, wd / "run")
    views = build_views(Path(res.path), ViewsConfig(text_encoder="tfidf"), wd / "cache")
    marker.write_text(json.dumps({"data": res.path, "views": str(views), "counts": res.counts,
                                  "seconds": round(time.perf_counter() - t, 1)}))
    print(f"data version {res.path}: {res.counts} in {time.perf_counter() - t:.0f}s", flush=True)
    return Path(res.path), views


def train_run(name: str, procs: int, threads: int, data: Path, views: Path, out: Path, epochs: int,
              extra: list[str]) -> dict:
    run_dir = out / "runs" / name
    sets = ["seed=0", "model.next_loss=sampled", f"train.epochs={epochs}", f"train.eval_every={epochs}",
            f"train.patience={epochs}", f"train.threads={threads * procs}", "train.progress=false", *extra]
    args = ["-m", "tasks.train", "--data", str(data), "--views", str(views), "--run-dir", str(run_dir),
            "--ckpt-dir", str(run_dir / "ckpt"), *[x for s in sets for x in ("--set", s)]]
    launcher = (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    load = os.getloadavg()[0]  # the machine may be shared: recorded with each row
    _, wall, peak = run_tree([sys.executable, *launcher, *args], env)
    res = json.loads((run_dir / "train_result.json").read_text())
    windows = res["training_windows"] * res["epochs_run"]
    return {"config": name, "processes": procs, "threads_per_process": threads, "epochs": res["epochs_run"],
            "training_windows": res["training_windows"], "train_s": res["train_seconds"],
            "windows_per_s": round(windows / res["train_seconds"], 1),
            "val_ndcg@10": round(res["history"][-1]["validation"]["ndcg@10"], 4),
            "val_hr@10": round(res["history"][-1]["validation"]["hr@10"], 4),
            "wall_s": round(wall, 1), "peak_rss_gb": round(peak, 2), "load_1min_before": round(load, 2)}


def eval_run(n_items: int, chunk: int, users: int) -> dict:
    load = os.getloadavg()[0]
    out, wall, _ = run_tree([sys.executable, "-c", EVAL_CHILD, str(n_items), str(chunk), str(users)],
                            {**os.environ, "OMP_NUM_THREADS": "1"})
    r = json.loads(out.strip().splitlines()[-1])
    return {"n_items": n_items, "item_chunk": chunk, "users": users, "seconds": round(r["seconds"], 2),
            "peak_increase_gb": round(r["peak_increase_gb"], 3), "rss_before_gb": round(r["rss_before_gb"], 3),
            "ndcg@10": r["ndcg@10"], "coverage@10": r["coverage@10"], "load_1min_before": round(load, 2)}


def render(train_rows: list[dict], eval_rows: list[dict], counts: dict) -> str:
    lines = [f"Training: {counts.get('users')} users, {counts.get('items')} items, {counts.get('events')} events; "
             "sampled softmax; same job and global batch in every row", "",
             "| processes x threads | epochs | training windows/s | speed-up vs 1x1 | val NDCG@10 | val HR@10 | "
             "train s | wall s | peak RSS GB |", "|---|---|---|---|---|---|---|---|---|"]
    base = next((r["windows_per_s"] for r in train_rows if r["config"] == "1x1"), None)
    for r in train_rows:
        speed = f"{r['windows_per_s'] / base:.2f}x" if base else ""
        lines.append(f"| {r['processes']} x {r['threads_per_process']} | {r['epochs']} | {r['windows_per_s']:.0f} | "
                     f"{speed} | {r['val_ndcg@10']:.4f} | {r['val_hr@10']:.4f} | {r['train_s']:.1f} | "
                     f"{r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} |")
    lines += ["", "| items | item chunk | users | eval s | peak RSS increase GB | NDCG@10 |",
              "|---|---|---|---|---|---|"]
    for r in eval_rows:
        chunk = "one pass" if r["item_chunk"] >= r["n_items"] else f"{r['item_chunk']:,}"
        lines.append(f"| {r['n_items']:,} | {chunk} | {r['users']} | {r['seconds']:.2f} | "
                     f"{r['peak_increase_gb']:.3f} | {r['ndcg@10']:.5f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-out/ddp")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=130_000)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=["1x1", "1x2", "2x1"], help="PROCESSESxTHREADS")
    ap.add_argument("--set", action="append", default=[], help="extra --set for every training run")
    ap.add_argument("--eval-items", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--eval-chunks", type=int, nargs="+", default=[65_536, 16_384])
    ap.add_argument("--eval-users", type=int, default=1024)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_rows: list[dict] = []
    counts: dict = {}
    if args.configs:
        data, views = prepare(out, args.users, args.items, args.events)
        counts = json.loads((out / "data.json").read_text())["counts"]
        for c in args.configs:
            procs, threads = (int(x) for x in c.split("x"))
            row = train_run(c, procs, threads, data, views, out, args.epochs, args.set)
            train_rows.append(row)
            print(json.dumps(row), flush=True)
    eval_rows = []
    for n in args.eval_items:
        for chunk in [n + 2, *args.eval_chunks]:
            row = eval_run(n + 2, chunk, args.eval_users)
            eval_rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "ddp_bench.json").write_text(json.dumps({"data": counts, "train": train_rows, "eval": eval_rows,
                                                    "argv": sys.argv[1:]}, indent=2))
    md = render(train_rows, eval_rows, counts)
    (out / "ddp_bench.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
