"""The shape table: the default network against the reference SASRec-CE (`model.preset=sasrec-ce`),
Markov and Pop, on several data shapes, several seeds, the same split, with the paired CI of
default - SASRec-CE (each user's mean over seeds; tasks.ab.paired_stats, as the A/B gate).

Each shape's data version is made by what users run (`seqrec run --until preprocess`); both models
train and evaluate through the pipeline's own train/evaluate stages (benchmarks/paired_runs.py).

Usage:
  python benchmarks/shapes.py --shapes ml-100k default --seeds 0 1 2 --out bench-out/shapes
Shapes (a `--set` list each; the synthetic ones are `seqrec data synth` shapes):
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_runs import compare, run_arm  # noqa: E402

SHAPES: dict[str, list[str]] = {
    "ml-100k": ["data.source=ml-100k"],
    "default": ["data.source=synthetic"],  # the generator's default: 2,000 users, 500 items, 100k events
    "dense-successors": ["data.source=synthetic", "data.synthetic.shape=dense-successors"],
    # the sparse long-tail shape (median 6 events per user, Zipf 1.1, no side information) at a fifth
    # of its users and items, so both arms fit a 2-core CPU in minutes (`--common train.max_seconds=300`)
    "sparse-longtail-20k": ["data.source=synthetic", "data.synthetic.shape=sparse-longtail",
                            "data.synthetic.users=10000", "data.synthetic.items=20000", "data.synthetic.events=100000"],
    "sparse-longtail": ["data.source=synthetic", "data.synthetic.shape=sparse-longtail"],
}
ARMS = {"default": [], "sasrec-ce": ["model.preset=sasrec-ce"]}
__doc__ += "\n".join(f"  {k}: {' '.join(v)}" for k, v in SHAPES.items())


def data_version(shape: str, sets: list[str], out: Path) -> tuple[Path, dict, float]:
    """The shape's data version, made by `seqrec run --until preprocess` (reused when it exists)."""
    wd = out / f"wd-{shape}"
    summary = out / f"data-{shape}.json"
    t = time.perf_counter()
    if not summary.is_file():
        cmd = [str(Path(sys.executable).with_name("seqrec")), "run", "--workdir", str(wd), "--until", "preprocess",
               "--summary-json", str(summary)] + [a for s in sets for a in ("--set", s)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    s = json.loads(summary.read_text())
    return Path(s["data_path"]), s["dataset"], time.perf_counter() - t


def shape_row(shape: str, sets: list[str], seeds: list[int], out: Path, common: list[str]) -> dict:
    data, dataset, _ = data_version(shape, sets, out)
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in seeds:  # interleaved: machine load falls on both arms alike
        for arm, arm_sets in ARMS.items():
            r = run_arm(data, common + arm_sets, seed, out)
            runs[arm].append(r)
            print(json.dumps({"shape": shape, "arm": arm, **{k: v for k, v in r.items() if k != "per_user"}}),
                  flush=True)
    cmp = compare(runs["sasrec-ce"], runs["default"])

    def stat(arm: str, key: str) -> list[float]:
        return [float(r[key]) for r in runs[arm]]

    base = runs["default"][0]["baselines"]
    return {"shape": shape, "sets": sets, "dataset": dataset, "seeds": seeds,
            "default_ndcg": stat("default", "test"), "sasrec_ndcg": stat("sasrec-ce", "test"),
            "default_hr": stat("default", "test_hr"), "sasrec_hr": stat("sasrec-ce", "test_hr"),
            "markov_ndcg": base["markov"], "pop_ndcg": base["pop"],
            "default_train_s": stat("default", "train_s"), "sasrec_train_s": stat("sasrec-ce", "train_s"),
            "default_minus_sasrec": cmp["b_minus_a"], "ci95": cmp["ci95"], "p_seeds": cmp["paired_t_over_seeds_p"],
            "ratio": float(np.mean(stat("default", "test")) / max(np.mean(stat("sasrec-ce", "test")), 1e-12))}


def markdown(rows: list[dict]) -> str:
    def ms(x: list[float]) -> str:
        return f"{np.mean(x):.4f} ± {np.std(x, ddof=1) if len(x) > 1 else 0:.4f}"

    head = ("| shape | users / items / events | default NDCG@10 | SASRec-CE NDCG@10 | Markov | Pop | default HR@10 | "
            "SASRec-CE HR@10 | default / SASRec-CE | default - SASRec-CE [95% CI] | train s (default / SASRec-CE) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        d = r["dataset"]
        lines.append(f"| {r['shape']} | {d['users']:,} / {d['items']:,} / {d['events']:,} | {ms(r['default_ndcg'])} | "
                     f"{ms(r['sasrec_ndcg'])} | {r['markov_ndcg']:.4f} | {r['pop_ndcg']:.4f} | {ms(r['default_hr'])} | "
                     f"{ms(r['sasrec_hr'])} | {r['ratio']:.2f}x | {r['default_minus_sasrec']:+.4f} "
                     f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] | {np.median(r['default_train_s']):.0f} / "
                     f"{np.median(r['sasrec_train_s']):.0f} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), help=f"of {list(SHAPES)}, or name=set1,set2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--common", default="", help="overrides for both arms, comma-separated")
    ap.add_argument("--out", default="bench-out/shapes")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [x for x in args.common.split(",") if x]
    rows = []
    for spec in args.shapes:
        name, _, sets = spec.partition("=")
        rows.append(shape_row(name, sets.split(",") if sets else SHAPES[name], args.seeds, out, common))
        (out / "shapes.json").write_text(json.dumps(rows, indent=2))
    print(markdown(rows), flush=True)
    (out / "shapes.md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
