"""How much better than Markov can any model be on a synthetic data version?

The generator (tasks/synthetic.py) draws each next item from a known mixture: with P_FOLLOW one of
the previous item's fixed successors, with `skip` one of the fixed second-order successors of the
item two events back, otherwise an item of the user's taste (genre preference x popularity within
the genre). This script scores the test (and validation) targets of a data
version built from such a log with:
- `oracle`: the generator's own distribution (the best any model can do in expectation);
- `empirical mixture`: the same mixture estimated from training events only (transition counts,
  the user's genre counts, item counts) for a few mixture weights;
- Markov and Pop as the pipeline computes them.
All through the pipeline's full-ranking evaluation (models/metrics.py).

Usage: python benchmarks/synthetic_oracle.py --data <data version dir of a synthetic log> [--exclude-seen true]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.baselines import Markov, Popularity
from models.metrics import evaluate_ranking_chunked
from tasks import synthetic as S
from seqrec.catalog import DataVersion


def generator_params(data: Path) -> dict:
    """Users, items, events and seed of the synthetic log behind a data version (its MANIFEST)."""
    dv = DataVersion(data)
    manifest = json.loads((Path(dv.meta["inputs"]["items"]).parent / "MANIFEST.json").read_text())
    if manifest.get("generator") != "seqrec.synthetic/1":
        raise SystemExit(f"{data} was not built from a seqrec synthetic log")
    return {**manifest["counts"], "seed": manifest["seed"], "follow": manifest.get("follow", S.P_FOLLOW),
            "skip": manifest.get("skip", 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--exclude-seen", choices=["true", "false"], default="true")
    args = ap.parse_args()
    data = Path(args.data)
    g = generator_params(data)
    rng = np.random.default_rng([g["seed"], 0])  # the generator's base stream, in its order
    _, primary, pop = S._items(g["items"], rng)
    succ = S._successors(primary, rng)
    succ2 = S.second_order_successors(primary, g["seed"]) if g["skip"] else None
    _, pref = S._users(g["users"], rng)
    iv = pd.read_parquet(data / "vocab" / "items.parquet")
    uv = pd.read_parquet(data / "vocab" / "users.parquet")
    n = int(iv["item_idx"].max()) + 1
    gen_of = np.full(n, -1)
    gen_of[iv["item_idx"]] = iv["item_id"].str[1:].astype(int)
    idx_of = np.zeros(g["items"], int)
    idx_of[gen_of[gen_of >= 0]] = np.flatnonzero(gen_of >= 0)
    n_genres = pref.shape[1]
    genre = np.zeros(n, int)
    genre[idx_of] = primary
    pop_share = pop / np.bincount(primary, weights=pop, minlength=n_genres)[primary]
    seq = DataVersion(data).sequences()
    uid = dict(zip(uv["user_idx"], uv["user_id"].str[1:].astype(int)))
    users = np.array([uid[u] for u in seq["user_idx"]])
    train = [np.asarray(s[:k]) for s, k in zip(seq["items"], seq["n_train"])]
    trans = np.zeros((n, n))
    counts = np.zeros(n)
    for s in train:
        np.add.at(trans, (s[:-1], s[1:]), 1)
        np.add.at(counts, s, 1)
    trans = (trans + 1e-3) / (trans + 1e-3).sum(1, keepdims=True)
    in_genre = counts / np.maximum(np.bincount(genre, weights=counts, minlength=n_genres)[genre], 1)
    taste = np.stack([np.bincount(genre[s], minlength=n_genres) + 0.5 for s in train])
    taste /= taste.sum(1, keepdims=True)
    exclude = args.exclude_seen == "true"
    out = {"generator": g, "exclude_seen": exclude}
    for split, off in (("validation", 0), ("test", 1)):
        hist = [np.asarray(s[: k + off]) for s, k in zip(seq["items"], seq["n_train"])]
        tgt = np.array([s[k + off] for s, k in zip(seq["items"], seq["n_train"])])
        seen = [np.unique(h) for h in hist] if exclude else None

        def run(rows_of) -> float:
            def scorer(idx: np.ndarray):
                t = torch.as_tensor(np.stack([rows_of(i) for i in idx]), dtype=torch.float32)
                return lambda a, b: t[:, a:b].clone()
            return round(evaluate_ranking_chunked(scorer, len(tgt), tgt, seen, n, 512, n)[0]["ndcg@10"], 4)

        def oracle(i: int) -> np.ndarray:
            p = np.zeros(n)
            p[idx_of] = (1 - g["follow"] - g["skip"]) * pref[users[i], primary] * pop_share
            np.add.at(p, idx_of[succ[gen_of[hist[i][-1]]]], g["follow"] / S.SUCCESSORS)
            if succ2 is not None and len(hist[i]) >= 2:  # the generator skips only with two events back
                np.add.at(p, idx_of[succ2[gen_of[hist[i][-2]]]], g["skip"] / S.SUCCESSORS)
            return p

        res = {"oracle": run(oracle)}
        for w in sorted({0.3, 0.45, 0.6, round(g["follow"], 2)}):
            res[f"empirical mixture (follow weight {w})"] = run(
                lambda i, w=w: w * trans[hist[i][-1]] + (1 - w) * taste[i][genre] * in_genre)
        for name, model in (("markov", Markov(train, n)), ("pop", Popularity(train, n))):
            res[name] = round(evaluate_ranking_chunked(lambda idx, m=model: m.chunk_scorer([hist[i] for i in idx]),
                                                       len(tgt), tgt, seen, n, 512, n)[0]["ndcg@10"], 4)
        out[split] = res
        print(split, json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
