"""Replay of consecutive periods through the production loop, as it runs unattended:

1. ml-100k's events are cut into weekly partitions `events/date=<monday>/` (users and items tables
   as they are);
2. `seqrec server start` (Prefect + MLflow servers), `seqrec serve` (the training deployment, config:
   partitions up to `data.until`, `train.init_from=champion`, drift report), `seqrec serve-model`
   (the service, alias polled every 2 s);
3. per period: the training deployment is run through the Prefect server with `data.until` = the
   period's end (run_deployment: what a schedule does); then a cold start on the same data version
   (`seqrec run --set train.init_from=none --until evaluate`, nothing registered) for comparison;
   then the served version is read from the service's /ready.

Recorded per period: cut-off, events, data version, drift (popularity JS, new-item share), warm
and cold training (seconds, epochs, test NDCG@10), the A/B decision and lift, the champion, the
version the service answers with and how long after the run it did.

    python benchmarks/replay.py --workdir /tmp/replay --out bench-out/replay.json --plot docs/img/replay.png
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SEQREC = str(Path(sys.executable).with_name("seqrec"))


def partition(src: Path, out: Path, every: str = "week") -> list[str]:
    """Weekly (or monthly) partitions of the events; returns the partition values (the first day of
    each, ISO)."""
    ev = pd.read_parquet(src / "events.parquet") if (src / "events.parquet").is_file() else \
        pd.read_parquet(src / "events")
    day = pd.to_datetime(ev["timestamp"], unit="s").dt.normalize()
    if every == "week":
        monday = (day - pd.to_timedelta(day.dt.day_of_week, unit="D")).dt.strftime("%Y-%m-%d")
    else:
        monday = day.dt.strftime("%Y-%m-01")
    for value, part in ev.groupby(monday):
        d = out / "events" / f"date={value}"
        d.mkdir(parents=True, exist_ok=True)
        part.to_parquet(d / "part-0.parquet", index=False)
    for name in ("users.parquet", "items.parquet"):
        (out / name).write_bytes((src / name).read_bytes())
    return sorted(monday.unique())


def cut_offs(weeks: list[str], counts: pd.Series, first_share: float, periods: int) -> list[str]:
    """The first period holds `first_share` of the events, the others equal shares of the rest."""
    cum = counts.sort_index().cumsum() / counts.sum()
    marks = [first_share + (1 - first_share) * i / (periods - 1) for i in range(periods - 1)]
    out = [str(cum.index[np.searchsorted(cum.to_numpy(), m)]) for m in marks]
    return [*dict.fromkeys(out), weeks[-1]]


def wait_http(url: str, timeout: float, ok=lambda r: r.status_code == 200):
    import httpx

    end = time.time() + timeout
    while time.time() < end:
        try:
            r = httpx.get(url, timeout=3)
            if ok(r):
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True, help="must not exist")
    ap.add_argument("--out", type=Path, default=Path("bench-out/replay.json"))
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--periods", type=int, default=4)
    ap.add_argument("--first-share", type=float, default=0.7)
    ap.add_argument("--ports", default="14200,15000,18090", help="Prefect, MLflow, service")
    ap.add_argument("--source", choices=["ml-100k", "synthetic"], default="ml-100k")
    ap.add_argument("--synth", default="20000,5000,1000000", help="users,items,events of the synthetic log")
    ap.add_argument("--max-seconds", type=float, default=None, help="train.max_seconds of every training")
    args = ap.parse_args()
    wd = args.workdir.resolve()
    if wd.exists():
        sys.exit(f"{wd} exists; give a fresh directory")
    from tasks.sources import ML100K_SCHEMA, SYNTH_SCHEMA, DataConfig, resolve_inputs

    if args.source == "ml-100k":
        src, schema, every = Path(resolve_inputs(DataConfig()).events[0]).parent, ML100K_SCHEMA, "week"
    else:
        u, i, e = (int(x) for x in args.synth.split(","))
        synth = DataConfig(source="synthetic", synthetic={"users": u, "items": i, "events": e, "seed": 0})
        src, schema, every = Path(resolve_inputs(synth).events[0]).parents[1], SYNTH_SCHEMA, "month"
    data = wd.parent / f"{wd.name}-events"
    weeks = partition(src, data, every)
    counts = pd.Series({w: len(pd.read_parquet(data / "events" / f"date={w}")) for w in weeks})
    periods = cut_offs(weeks, counts, args.first_share, args.periods)
    p_prefect, p_mlflow, p_serve = (int(x) for x in args.ports.split(","))
    cfg = {"data": {"source": "files", "events": str(data / "events"), "users": str(data / "users.parquet"),
                    "items": str(data / "items.parquet"), "schema": schema.model_dump(),
                    "until": periods[0]},
           "train": {"init_from": "champion", "progress": False,
                     **({"max_seconds": args.max_seconds} if args.max_seconds else {})},
           "server": {"prefect_port": p_prefect, "mlflow_port": p_mlflow}}
    wd.mkdir(parents=True)
    cfg_path = wd.parent / f"{wd.name}-config.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([SEQREC, "server", "start", "--workdir", str(wd), "--config", str(cfg_path)], check=True, env=env)
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{p_prefect}/api"
    procs = []
    rows = []
    try:
        procs.append(subprocess.Popen([SEQREC, "serve", "--workdir", str(wd), "--config", str(cfg_path)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        serve_log = open(wd.parent / f"{wd.name}-service.log", "w")
        procs.append(subprocess.Popen([SEQREC, "serve-model", "--workdir", str(wd), "--config", str(cfg_path),
                                       "--port", str(p_serve), "--poll-s", "2"], env=env, stdout=serve_log,
                                      stderr=subprocess.STDOUT))
        os.environ["PREFECT_API_URL"] = env["PREFECT_API_URL"]
        from prefect.deployments import run_deployment

        time.sleep(5)
        for i, until in enumerate(periods):
            run_id = f"period-{i + 1}"
            params = {"config": {**cfg, "data": {**cfg["data"], "until": until}}, "workdir": str(wd), "run_id": run_id}
            t0 = time.time()
            fr = run_deployment("seqrec-training/seqrec-training", parameters=params, timeout=3600)
            done = time.time()
            s = json.loads((wd / "runs" / run_id / "summary.json").read_text())
            if not fr.state.is_completed():
                sys.exit(f"{run_id}: flow run {fr.id} ended {fr.state.type}: {s.get('error')}")
            served = wait_http(f"http://127.0.0.1:{p_serve}/ready", 120,
                               lambda r: r.status_code == 200 and r.json()["version"] == s.get("champion"))
            served_after = time.time() - done
            cold_path = wd.parent / f"{wd.name}-cold-{i + 1}.json"
            subprocess.run([SEQREC, "run", "--workdir", str(wd), "--config", str(cfg_path), "--set",
                            f"data.until={until}", "--set", "train.init_from=none", "--until", "evaluate",
                            "--summary-json", str(cold_path)], check=True, env=env, capture_output=True)
            cold = json.loads(cold_path.read_text())
            tr, ctr = s["training"], cold["training"]
            ab = s.get("ab") or {}
            rows.append({
                "period": i + 1, "until": until, "events": s["dataset"]["events"], "data_version": s["data_version"],
                "drift_popularity_js": (s.get("drift") or {}).get("popularity_js"),
                "drift_new_item_share": (s.get("drift") or {}).get("new_item_event_share"),
                "warm_from": (tr.get("warm_start") or {}).get("from"),
                "warm_train_s": tr["train_seconds"], "warm_epochs": tr["epochs_run"],
                "warm_best_epoch": tr.get("best_epoch"), "warm_test_ndcg@10": s["metrics"]["test"]["ndcg@10"],
                "cold_train_s": ctr["train_seconds"], "cold_epochs": ctr["epochs_run"],
                "cold_best_epoch": ctr.get("best_epoch"), "cold_test_ndcg@10": cold["metrics"]["test"]["ndcg@10"],
                "ab_reference": ab.get("baseline") if ab.get("reference_version") is None else f"v{ab['reference_version']}",
                "decision": ab.get("decision"), "lift": ab.get("lift"), "ci": [ab.get("ci_low"), ab.get("ci_high")],
                "version": s["model"]["version"], "champion": s.get("champion"),
                "served_version": served.json()["version"], "served_after_s": round(served_after, 1),
                "flow_s": round(done - t0, 1), "flow_run_id": str(fr.id)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT if p.args[1] == "serve" else signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run([SEQREC, "server", "stop", "--workdir", str(wd), "--config", str(cfg_path)], env=env)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"periods": rows, "cut_offs": periods}, indent=2))
    if args.plot:
        plot(rows, args.plot)
    print(f"wrote {args.out}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["until"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(x, [r["warm_test_ndcg@10"] for r in rows], "o-", label="warm start (deployment run)")
    a.plot(x, [r["cold_test_ndcg@10"] for r in rows], "s--", label="cold start (same data)")
    a.set_title("test NDCG@10 per period")
    a.legend()
    b.bar(np.arange(len(rows)) - 0.2, [r["warm_train_s"] for r in rows], 0.4, label="warm")
    b.bar(np.arange(len(rows)) + 0.2, [r["cold_train_s"] for r in rows], 0.4, label="cold")
    b.set_xticks(np.arange(len(rows)), x)
    b.set_title("training seconds per period")
    b.legend()
    for ax in (a, b):
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
