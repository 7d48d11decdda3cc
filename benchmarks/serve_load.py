"""Load test of the online service as users run it: `seqrec serve-model` on loopback, driven by a
small keep-alive HTTP client (asyncio streams: the client must not eat the 2 cores it measures).

Phases, each bounded by a request count and a time limit: single-user POST /recommend at 1, 8 and
32 concurrent clients; POST /recommend/batch (32 users per request) at 1 and 8 clients; single-user
requests at 8 clients while the champion alias flips between two versions every `--flip-s` seconds
(a promotion each time, SIGHUP so the service looks at once). Per phase: requests, failures (any
non-200), requests/s, p50/p95/p99 latency, and for the reload phase the versions that answered.

The work directory needs a champion and a second version; missing ones are trained first with
`seqrec run` (ml-100k defaults; the second with seed 1).

    python benchmarks/serve_load.py --workdir .seqrec --out bench-out/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SEQREC = str(Path(sys.executable).with_name("seqrec"))


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        assert self.r is not None
        self.w.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.w.drain()
        head = await self.r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length")
        return status, await self.r.readexactly(length)

    def close(self) -> None:
        if self.w is not None:
            self.w.close()


async def drive(port: int, make_body, clients: int, max_requests: int, max_seconds: float) -> dict:
    lat: list[float] = []
    fails: list[int] = []
    versions: dict[int, int] = {}
    sent = 0
    t_end = time.perf_counter() + max_seconds

    async def client(i: int) -> None:
        nonlocal sent
        conn = Conn("127.0.0.1", port)
        rng = random.Random(i)
        try:
            while sent < max_requests and time.perf_counter() < t_end:
                sent += 1
                body = make_body(rng)
                t = time.perf_counter()
                status, data = await conn.post(*body)
                lat.append(time.perf_counter() - t)
                if status != 200:
                    fails.append(status)
                    continue
                ans = json.loads(data)
                for a in ans.get("answers", [ans]):
                    versions[a["version"]] = versions.get(a["version"], 0) + 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"clients": clients, "requests": len(lat), "failures": len(fails), "failure_statuses": sorted(set(fails)),
            "seconds": round(wall, 2), "requests_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "versions": versions}


def ensure_versions(wd: Path) -> tuple[int, int]:
    """(champion, another version), training what is missing with `seqrec run`."""
    from tasks.registry import open_registry
    from tasks.tracking import TrackingConfig

    def reg():
        return open_registry(TrackingConfig(), wd)

    if reg().champion() is None:
        subprocess.run([SEQREC, "run", "--workdir", str(wd)], check=True, capture_output=True)
    if len(reg().versions()) < 2:
        subprocess.run([SEQREC, "run", "--workdir", str(wd), "--set", "seed=1"], check=True, capture_output=True)
    r = reg()
    champ = r.champion()
    other = next(int(v.version) for v in reversed(r.versions()) if int(v.version) != champ)
    return champ, other


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path(".seqrec"))
    ap.add_argument("--out", type=Path, default=Path("bench-out/serve_load.json"))
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--requests", type=int, default=6000, help="most requests per phase")
    ap.add_argument("--seconds", type=float, default=15, help="longest phase")
    ap.add_argument("--flip-s", type=float, default=2.0, help="seconds between alias moves in the reload phase")
    args = ap.parse_args()
    wd = args.workdir.resolve()
    champ, other = ensure_versions(wd)
    from tasks.bundle import Scorer  # noqa: F401  (the users to ask for come from the champion's vocabulary)
    from tasks.registry import open_registry
    from tasks.tracking import TrackingConfig, bundle_of

    reg = open_registry(TrackingConfig(), wd)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        import pandas as pd

        users = pd.read_parquet(bundle_of(reg.client, reg.name, champ, Path(tmp)) / "histories.parquet")["user_id"]
    users = [str(u) for u in users]
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([SEQREC, "serve-model", "--workdir", str(wd), "--port", str(args.port), "--poll-s", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        import httpx

        t0 = time.time()
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{args.port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() - t0 > 180:
                sys.exit(f"the service did not become ready:\n{proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.3)
        ready_s = time.time() - t0

        def single(rng):
            return "/recommend", json.dumps({"user_id": rng.choice(users), "k": 10}).encode()

        def batch(rng):
            return "/recommend/batch", json.dumps({"requests": [{"user_id": u, "k": 10}
                                                                 for u in rng.sample(users, 32)]}).encode()

        phases = []
        asyncio.run(drive(args.port, single, 8, 500, 10))  # warm-up, not recorded
        for clients in (1, 8, 32):
            phases.append({"phase": "single user", **asyncio.run(drive(args.port, single, clients, args.requests,
                                                                        args.seconds))})
            print(json.dumps(phases[-1]), flush=True)
        for clients in (1, 8):
            phases.append({"phase": "batch of 32 users", **asyncio.run(drive(args.port, batch, clients,
                                                                              args.requests // 8, args.seconds))})
            print(json.dumps(phases[-1]), flush=True)

        flips: list[float] = []

        async def reload_phase() -> dict:
            async def flipper() -> None:
                targets = [other, champ]
                i = 0
                end = time.perf_counter() + args.seconds
                while time.perf_counter() + args.flip_s < end:
                    await asyncio.sleep(args.flip_s)
                    await asyncio.to_thread(reg.promote_command, targets[i % 2], True)
                    proc.send_signal(signal.SIGHUP)
                    flips.append(time.perf_counter())
                    i += 1

            res, _ = await asyncio.gather(drive(args.port, single, 8, args.requests * 10, args.seconds), flipper())
            return res

        phases.append({"phase": "single user, alias moving", **asyncio.run(reload_phase()), "alias_moves": len(flips)})
        print(json.dumps(phases[-1]), flush=True)
        if reg.champion() != champ:
            reg.promote_command(champ, True)
        metrics = httpx.get(f"http://127.0.0.1:{args.port}/metrics", timeout=5).text
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=60)[0]
    reloads = [ln for ln in metrics.splitlines() if ln.startswith("seqrec_model_reloads_total")]
    out = {"workdir": str(wd), "champion": champ, "other_version": other, "ready_s": round(ready_s, 2),
           "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "phases": phases, "reloads": reloads,
           "service_log_tail": log[-2000:]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
