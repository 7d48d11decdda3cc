"""Train and evaluate stages: views -> model -> validation-selected weights -> one test pass,
baselines through the same evaluation, per-user metrics saved for the A/B step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict

from models.baselines import Markov, Popularity
from models.data import Sequences, eval_inputs
from models.metrics import evaluate_ranking
from models.net import ModelConfig, SeqRecNet, param_count
from models.train import Trainer, TrainConfig, evaluate_model, pick_device, seed_everything
from seqrec.fsutil import stable_hash
from tasks.bundle import load_net
from tasks.preprocess import read_sequences


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exclude_seen: bool = True
    batch_size: int = 512
    baselines: list[str] = ["pop", "markov"]


def load_sequences(data_path: Path, views: Path) -> Sequences:
    seq = read_sequences(data_path)
    engage = pd.read_parquet(Path(views) / "sequence_labels.parquet")["engage"]
    return Sequences(user=seq["user_idx"].to_numpy().astype(np.int64),
                     items=[np.asarray(x, np.int64) for x in seq["items"]],
                     etypes=[np.asarray(x, np.int64) for x in seq["event_types"]],
                     gaps=[np.asarray(x, np.int64) for x in seq["gap_buckets"]],
                     engage=[np.asarray(x, np.int64) for x in engage],
                     n_train=seq["n_train"].to_numpy().astype(np.int64))


def build_net(data_path: Path, views: Path, mcfg: ModelConfig) -> SeqRecNet:
    meta = json.loads((Path(data_path) / "meta.json").read_text())
    return load_net(views, mcfg, meta["counts"]["items"] + 2, meta["counts"]["users"] + 1)


def checkpoint_key(data_path: Path, views: Path, mcfg: ModelConfig, tcfg: TrainConfig, seed: int,
                   exclude_seen: bool) -> str:
    """Identifies a training job by content, so a re-run after a crash finds the job's checkpoint."""
    return stable_hash({"data": str(data_path), "views": str(views), "model": mcfg.model_dump(),
                        "train": tcfg.model_dump(exclude={"progress"}), "seed": seed, "exclude_seen": exclude_seen},
                       n=16)


def train(data_path: Path, views: Path, mcfg: ModelConfig, tcfg: TrainConfig, seed: int, run_dir: Path,
          log=print, exclude_seen: bool = True, ckpt_dir: Path | None = None) -> dict:
    """Fit (resuming from `ckpt_dir`/last.pt when a killed run left one), save model.pt in run_dir,
    then drop the checkpoint: the job is done."""
    import shutil

    seed_everything(seed)
    net = build_net(data_path, views, mcfg)
    seqs = load_sequences(data_path, views)
    ckpt_dir = Path(ckpt_dir or Path(run_dir) / "checkpoints")
    trainer = Trainer(net, seqs, tcfg, seed, ckpt_dir, log, exclude_seen)
    resumed = trainer.try_resume()
    fit = trainer.fit()
    model_path = Path(run_dir) / "model.pt"
    torch.save(net.state_dict(), model_path)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {**fit, "history": trainer.history, "model_path": str(model_path), "parameters": param_count(net),
            "resumed": resumed,
            "device": str(trainer.device), "training_windows": int(len(trainer.windows["seq"]))}


def evaluate(data_path: Path, views: Path, mcfg: ModelConfig, tcfg: TrainConfig, ecfg: EvalConfig,
             model_path: Path, run_dir: Path) -> dict:
    """Validation (for the record) and the single test pass; baselines on the same users."""
    net = build_net(data_path, views, mcfg)
    net.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    net.to(pick_device(tcfg))
    seqs = load_sequences(data_path, views)
    out: dict = {"validation": {}, "test": {}, "aux": {}, "baselines": {}}
    per_user = {}
    for split in ("validation", "test"):
        ev = eval_inputs(seqs, mcfg.max_len, split)
        means, per, aux = evaluate_model(net, ev, ecfg.exclude_seen, ecfg.batch_size)
        out[split] = means
        out["aux"][split] = aux
        per_user[split] = (ev, per)
    train_items = seqs.train_items()
    for name in ecfg.baselines:
        model = Popularity(train_items, net.n_items) if name == "pop" else Markov(train_items, net.n_items)
        out["baselines"][name] = {}
        for split in ("validation", "test"):
            ev = per_user[split][0]
            means, per = evaluate_ranking(lambda idx: model.score([ev["history"][i] for i in idx]), len(ev["target"]),
                                          ev["target"], ev["seen"] if ecfg.exclude_seen else None, net.n_items,
                                          ecfg.batch_size)
            out["baselines"][name][split] = means
            if split == "test":
                per_user[f"test_{name}"] = (ev, per)
    ev, per = per_user["test"]
    users = read_sequences(data_path)["user_id"].to_numpy()[ev["rows"]]
    frame = pd.DataFrame({"user_id": users, **{f"model.{k}": v for k, v in per.items()}})
    for name in ecfg.baselines:
        for k, v in per_user[f"test_{name}"][1].items():
            frame[f"{name}.{k}"] = v
    path = Path(run_dir) / "per_user_test_metrics.parquet"
    frame.to_parquet(path, index=False)
    out["per_user_metrics"] = str(path)
    return out
