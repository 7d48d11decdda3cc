"""What honest ties changed: test metrics of a run's model, Pop and Markov with ties counted for the
target (the old rule: only items scored strictly higher count) and as the expected value under random
tie-breaking (models/metrics.py), on the same scores.

Usage: python benchmarks/tie_effect.py --summary .seqrec/last-summary.json [--set key=value ...]
(the run's configuration: the same --set as the run, defaults otherwise)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def _both(rows: torch.Tensor, ev: dict, exclude_seen: bool, idx: np.ndarray) -> tuple[dict, dict]:
    from models.metrics import mask_scores, per_user_metrics, ranks

    tgt = torch.as_tensor(ev["target"][idx])
    s = mask_scores(rows, [ev["seen"][i] for i in idx] if exclude_seen else None, tgt)
    higher, ties = ranks(s, tgt)
    return per_user_metrics(higher), per_user_metrics(higher, ties)


def main() -> None:
    from flows.config import load_config
    from models.baselines import Markov, Popularity
    from models.data import eval_inputs
    from tasks.train import build_net, load_sequences

    ap = argparse.ArgumentParser()
    ap.add_argument("--summary", required=True, help="a run summary (seqrec run --summary-json)")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    s = json.loads(Path(args.summary).read_text())
    cfg = load_config(None, args.set)
    data, views = Path(s["data_path"]), Path(s["views_path"])
    exclude = s["eval_protocol"]["exclude_seen"]
    net = build_net(data, views, cfg.model)
    net.load_state_dict(torch.load(s["training"]["model_path"], map_location="cpu", weights_only=True))
    net.eval()
    seqs = load_sequences(data, views, cfg.model.user_history)
    ev = eval_inputs(seqs, cfg.model.max_len, "test")
    train_items = seqs.train_items()
    scorers = {"model": None, "pop": Popularity(train_items, net.n_items), "markov": Markov(train_items, net.n_items)}
    table = net.items.table().detach()
    out = {}
    for name, model in scorers.items():
        old: dict[str, list] = {}
        new: dict[str, list] = {}
        for lo in range(0, len(ev["target"]), 256):
            idx = np.arange(lo, min(len(ev["target"]), lo + 256))
            with torch.no_grad():
                if model is None:
                    seq = ev["seq"][idx]
                    h = net.last_state(seq, ev["etype"][idx], ev["gap"][idx], ev["user"][idx], table)
                    rows = net.rank(h, seq, table)(0, net.n_items).float()
                else:
                    rows = model.score([ev["history"][i] for i in idx]).float()
            a, b = _both(rows, ev, exclude, idx)
            for k in a:
                old.setdefault(k, []).append(a[k])
                new.setdefault(k, []).append(b[k])
        out[name] = {k: {"strict": float(np.concatenate(old[k]).mean()), "expected": float(np.concatenate(new[k]).mean())}
                     for k in ("ndcg@10", "hr@10", "mrr@10")}
        print(name, json.dumps(out[name]), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
