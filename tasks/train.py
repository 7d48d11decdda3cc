"""Train and evaluate stages: views -> model -> validation-selected weights -> one test pass,
baselines through the same evaluation, per-user metrics saved for the A/B step.

Training on several processes (torch DDP, models/distributed.py): `train_distributed` launches
`torchrun --standalone --nproc_per_node N -m tasks.train ...` (this module's `main`), whose rank 0
writes model.pt and the same result dict as `train`. By hand:
    torchrun --standalone --nproc_per_node 2 -m tasks.train --data DATA_VERSION_DIR --views VIEWS_DIR \
        --run-dir OUT [--config pipeline.yaml] [--set train.epochs=20 --set model.next_loss=sampled ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models import distributed as ddp
from models.baselines import Markov, Popularity
from models.data import Sequences, eval_inputs
from models.distributed import SINGLE, DistContext
from models.metrics import DEFAULT_ITEM_CHUNK, evaluate_ranking_chunked
from models.net import ModelConfig, SeqRecNet, param_count
from models.train import (Trainer, TrainConfig, TrainJob, evaluate_model, pick_device, progress_printer,
                          save_checkpoint, seed_everything)
from seqrec.catalog import DataVersion, Views
from seqrec.fsutil import write_json_atomic
from seqrec.splits import TEST, VALID, targets
from tasks.bundle import load_net
from tasks.preprocess import SplitConfig


class EvalConfig(SplitConfig):
    """Evaluation: the protocol (eval.protocol, eval.cutoff, ...: SplitConfig, baked into the data
    version) and how the ranking is scored."""

    model_config = ConfigDict(extra="forbid")
    exclude_seen: bool | Literal["auto"] = Field(
        "auto", description="rank only items the user has not interacted with. auto: on, unless the training "
        "targets repeat a seen item more often than max_repeat_rate (then the mask would point at the answer)")
    max_repeat_rate: float = Field(0.05, ge=0, le=1, description="exclude_seen=auto switches off above this share "
                                   "of training targets that repeat an item the user saw before")
    def split(self) -> SplitConfig:
        """What preprocessing needs of the protocol (it writes the split into the data version)."""
        return SplitConfig(**self.model_dump(include=set(SplitConfig.model_fields)))
    batch_size: int = 512
    item_chunk: int = Field(DEFAULT_ITEM_CHUNK, ge=1, description="items scored at a time in full-ranking "
                            "evaluation (memory ~ batch_size x item_chunk floats); results do not depend on it")
    baselines: list[str] = ["pop", "markov"]


def repeat_rate(data_path: Path) -> float:
    """Share of training targets (each user's training events after the first) that repeat an item
    the same user interacted with earlier; validation and test events are not looked at."""
    seq = DataVersion(data_path).sequences(["items", "n_train"])
    lens = seq["n_train"].to_numpy()
    items = np.concatenate([np.asarray(v)[:n] for v, n in zip(seq["items"], lens)] or [np.zeros(0, np.int64)])
    users = np.repeat(np.arange(len(lens)), lens)
    repeats = pd.DataFrame({"u": users, "i": items}).duplicated().to_numpy()  # a later occurrence of (user, item)
    n_targets = int(np.maximum(lens - 1, 0).sum())
    return float(repeats.sum() / n_targets) if n_targets else 0.0


def resolve_exclude_seen(data_path: Path, ecfg: EvalConfig, log=print) -> tuple[EvalConfig, dict]:
    """`exclude_seen=auto` decided on this data version. With exclusion every seen item is masked but
    the target; when targets are often repeats, that mask tells the ranking which seen item is the
    answer (metrics inflated, model selection misled), so auto keeps repeats rankable there."""
    rate = repeat_rate(data_path)
    heavy = rate > ecfg.max_repeat_rate
    if ecfg.exclude_seen == "auto":
        exclude = not heavy
        reason = (f"training targets repeat a seen item {rate:.1%} of the time (> eval.max_repeat_rate "
                  f"{ecfg.max_repeat_rate:.0%}): seen items stay rankable, a mask would hint at the answer"
                  if heavy else f"training targets repeat a seen item {rate:.1%} of the time: seen items excluded")
        if heavy:
            log(f"eval.exclude_seen=auto -> false: {reason}")
    else:
        exclude = bool(ecfg.exclude_seen)
        reason = "set in the configuration"
        if exclude and heavy:
            log(f"warning: eval.exclude_seen=true although training targets repeat a seen item {rate:.1%} of the "
                f"time: the mask leaves the target as the only seen item, which inflates the metrics")
    return ecfg.model_copy(update={"exclude_seen": exclude}), {"exclude_seen": exclude, "repeat_rate": round(rate, 5),
                                                                "reason": reason}


def load_sequences(data_path: Path, views: Path, user_history: bool = False) -> Sequences:
    """The data version's sequences as arrays; `user_history`: with the item attributes the model's
    causal user history summarises (models/data.py)."""
    seq = DataVersion(data_path).sequences()
    v = Views(views)
    engage = v.engagement()
    return Sequences(user=seq["user_idx"].to_numpy().astype(np.int64),
                     items=[np.asarray(x, np.int64) for x in seq["items"]],
                     etypes=[np.asarray(x, np.int64) for x in seq["event_types"]],
                     gaps=[np.asarray(x, np.int64) for x in seq["gap_buckets"]],
                     engage=[np.asarray(x, np.int64) for x in engage],
                     n_train=seq["n_train"].to_numpy().astype(np.int64),
                     valid_targets=targets(seq["split"], VALID), test_targets=targets(seq["split"], TEST),
                     attr=v.item_arrays()["attr_target"].astype(np.float32) if user_history else None)


def build_net(data_path: Path, views: Path, mcfg: ModelConfig) -> SeqRecNet:
    dv = DataVersion(data_path)
    return load_net(views, mcfg, dv.n_items, dv.n_users)


def data_id(data_path: Path, views: Path) -> str:
    """What a job trains on, by content: the data version's and the views' hash names."""
    return f"{Path(data_path).name}/{Path(views).name}"


def train_in_workdir(data_path: Path, views: Path, mcfg: ModelConfig, tcfg: TrainConfig, seed: int,
                     ecfg: "EvalConfig", workdir: Path, run_dir: Path, log=print, init: dict | None = None) -> dict:
    """The pipeline's train stage: the job's checkpoints live in <workdir>/checkpoints/<job key>, so a
    re-run after a crash resumes it; a second run of the same job waits for the first (one writer)."""
    from seqrec.fsutil import waiting_lock

    exclude_seen = bool(ecfg.exclude_seen)
    job = TrainJob(data=data_id(data_path, views), model=mcfg, train=tcfg, seed=seed, exclude_seen=exclude_seen,
                   init=init["label"] if init else "")
    ckpt = Path(workdir) / "checkpoints" / job.key()
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with waiting_lock(Path(str(ckpt) + ".lock"), log, f"another run is training the same job ({ckpt}); waiting"):
        return train(Path(data_path), views, mcfg, tcfg, seed, run_dir, log=log, exclude_seen=exclude_seen,
                     ckpt_dir=ckpt, item_chunk=ecfg.item_chunk, init=init)


def train(data_path: Path, views: Path, mcfg: ModelConfig, tcfg: TrainConfig, seed: int, run_dir: Path,
          log=print, exclude_seen: bool = True, ckpt_dir: Path | None = None, dist: DistContext = SINGLE,
          item_chunk: int = DEFAULT_ITEM_CHUNK, init: dict | None = None) -> dict:
    """Fit (resuming from `ckpt_dir`/last.pt when a killed run left one), save model.pt in run_dir,
    then drop the checkpoint: the job is done. With `tcfg.processes` > 1 this launches torchrun
    (train_distributed), whose workers call this again with their `dist` (process group started):
    rank 0 writes the files, every rank returns the same dict."""
    import shutil

    if tcfg.processes > 1 and not dist.active:
        return train_distributed(data_path, views, mcfg, tcfg, seed, run_dir, tcfg.processes, log, exclude_seen,
                                 ckpt_dir, item_chunk, init)
    seed_everything(seed)
    net = build_net(data_path, views, mcfg)
    warm = None
    if init:  # `init`: {"bundle": the champion's bundle directory, "label": its name and version}
        from tasks.warm import warm_start

        warm = {"from": init["label"], **warm_start(net, Path(init["bundle"]), DataVersion(data_path).item_ids())}
        log(f"warm start from {init['label']}: {warm['parameters_copied']}/{warm['parameters']} parameters, "
            f"{warm['items']['matched']} items matched by id, {warm['items']['new']} new")
    seqs = load_sequences(data_path, views, mcfg.user_history)
    ckpt_dir = Path(ckpt_dir or Path(run_dir) / "checkpoints")
    trainer = Trainer(net, seqs, tcfg, seed, ckpt_dir, log, exclude_seen, dist, item_chunk,
                      data=data_id(data_path, views), init=init["label"] if init else "")
    resumed = trainer.try_resume()
    fit = trainer.fit()
    model_path = Path(run_dir) / "model.pt"
    if dist.is_main:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        save_checkpoint(model_path, net.state_dict())
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    out = {**fit, "history": trainer.history, "model_path": str(model_path), "parameters": param_count(net),
           "resumed": resumed,
           "device": str(trainer.device), "compiled": trainer.compiled,
           "training_windows": int(len(trainer.windows["seq"]))}
    if warm is not None:
        out["warm_start"] = warm
    if dist.active:
        out["world_size"] = dist.world_size
    return out


def train_distributed(data_path: Path, views: Path, mcfg: ModelConfig, tcfg: TrainConfig, seed: int, run_dir: Path,
                      nproc: int, log=print, exclude_seen: bool = True, ckpt_dir: Path | None = None,
                      item_chunk: int = DEFAULT_ITEM_CHUNK, init: dict | None = None) -> dict:
    """`train` on `nproc` local processes (torchrun, DDP: gloo on CPU, NCCL on GPUs). Returns rank
    0's result dict; raises with the tail of the workers' output when the launch fails."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    job = run_dir / "ddp_job.json"
    result = run_dir / "train_result.json"
    result.unlink(missing_ok=True)
    write_json_atomic(job, {"seed": seed, "model": mcfg.model_dump(),
                            "train": tcfg.model_copy(update={"processes": nproc}).model_dump(),
                            "eval": {"exclude_seen": exclude_seen, "item_chunk": item_chunk}})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "tasks.train", "--data", str(data_path), "--views", str(views), "--run-dir", str(run_dir),
           "--config", str(job), "--result", str(result)]
    if ckpt_dir:
        cmd += ["--ckpt-dir", str(ckpt_dir)]
    if init:
        cmd += ["--init-bundle", str(init["bundle"]), "--init-label", init["label"]]
    env = {**os.environ, "OMP_NUM_THREADS": str(ddp.threads_per_process(tcfg.threads, DistContext(0, nproc)))}
    tail: deque[str] = deque(maxlen=60)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1]) as proc:
        for line in proc.stdout:
            tail.append(line.rstrip())
            if line.startswith("[rank0] "):
                log(line[len("[rank0] "):].rstrip())
        rc = proc.wait()
    if rc != 0 or not result.is_file():
        raise RuntimeError(f"distributed training failed (exit {rc}): " + "\n".join(tail))
    return json.loads(result.read_text())


class WorkerConfig(BaseModel):
    """What a training worker reads of a configuration: a pipeline config file works as it is (its
    other sections are ignored), and so does the job file `train_distributed` writes."""

    model_config = ConfigDict(extra="ignore")
    seed: int = 0
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


def main(argv: list[str] | None = None) -> None:
    """One torchrun worker: configs as in `seqrec run` (--config YAML/JSON, --set dotted.key=value)."""
    import argparse

    from seqrec.configtree import load_tree, validate_tree

    ap = argparse.ArgumentParser(prog="torchrun --standalone --nproc_per_node N -m tasks.train",
                                 description="train on a data version's views, data-parallel over the "
                                             "launched processes")
    ap.add_argument("--data", required=True, help="a data version directory (sequences.parquet, meta.json)")
    ap.add_argument("--views", required=True, help="its views directory (tasks/features.py)")
    ap.add_argument("--run-dir", required=True, help="model.pt (and the checkpoints by default) go here")
    ap.add_argument("--config", help="pipeline config file; only seed, model, train and eval are used")
    ap.add_argument("--set", action="append", default=[], help="override: dotted.key=value")
    ap.add_argument("--ckpt-dir", help="checkpoint directory (default RUN_DIR/checkpoints)")
    ap.add_argument("--result", help="rank 0 writes the result JSON here (default RUN_DIR/train_result.json)")
    ap.add_argument("--init-bundle", help="warm start from this model bundle's weights (tasks/warm.py)")
    ap.add_argument("--init-label", default="", help="what the warm start names it (model name and version)")
    args = ap.parse_args(argv)
    cfg = validate_tree(WorkerConfig, load_tree(args.config, args.set), args.config or "--set")
    ctx = ddp.from_env()
    if ctx.active:
        ddp.exit_with_launcher()
    ddp.start(ctx, pick_device(cfg.train, ctx))
    # a rank that fails exits non-zero and torchrun stops the others: no barrier on that path
    # the launch decides the process count (train.processes is what asks for one)
    tcfg = cfg.train.model_copy(update={"processes": ctx.world_size})
    ecfg = resolve_exclude_seen(Path(args.data), cfg.eval)[0] if cfg.eval.exclude_seen == "auto" else cfg.eval
    res = train(Path(args.data), Path(args.views), cfg.model, tcfg, cfg.seed, Path(args.run_dir),
                log=progress_printer(f"[rank{ctx.rank}] "), exclude_seen=ecfg.exclude_seen,
                ckpt_dir=Path(args.ckpt_dir) if args.ckpt_dir else None, dist=ctx, item_chunk=cfg.eval.item_chunk,
                init={"bundle": args.init_bundle, "label": args.init_label} if args.init_bundle else None)
    if ctx.is_main:
        write_json_atomic(Path(args.result or Path(args.run_dir) / "train_result.json"), res)
    ddp.stop(ctx)


def evaluate(data_path: Path, views: Path, mcfg: ModelConfig, tcfg: TrainConfig, ecfg: EvalConfig,
             model_path: Path, run_dir: Path) -> dict:
    """Validation (for the record) and the single test pass; baselines on the same users."""
    if ecfg.exclude_seen == "auto":
        ecfg = resolve_exclude_seen(data_path, ecfg)[0]
    net = build_net(data_path, views, mcfg)
    net.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    net.to(pick_device(tcfg))
    seqs = load_sequences(data_path, views, mcfg.user_history)
    out: dict = {"validation": {}, "test": {}, "aux": {}, "baselines": {}}
    per_user = {}
    thresholds: dict[str, float] | None = None  # auxiliary heads: 0.5 on validation, then validation's best-F1
    for split in ("validation", "test"):
        ev = eval_inputs(seqs, mcfg.max_len, split)
        means, per, aux = evaluate_model(net, ev, ecfg.exclude_seen, ecfg.batch_size, item_chunk=ecfg.item_chunk,
                                         thresholds=thresholds)
        thresholds = {head: m["f1_threshold"] for head, m in aux.items()}
        if split == "test":  # chosen on validation only; a test-optimal threshold is not reported
            aux = {head: {k: v for k, v in m.items() if k != "f1_threshold"} for head, m in aux.items()}
        out[split] = means
        out["aux"][split] = aux
        per_user[split] = (ev, per)
    train_items = seqs.train_items()
    for name in ecfg.baselines:
        model = Popularity(train_items, net.n_items) if name == "pop" else Markov(train_items, net.n_items)
        out["baselines"][name] = {}
        for split in ("validation", "test"):
            ev = per_user[split][0]
            means, per = evaluate_ranking_chunked(lambda idx: model.chunk_scorer([ev["history"][i] for i in idx]),
                                                  len(ev["target"]), ev["target"],
                                                  ev["seen"] if ecfg.exclude_seen else None, net.n_items,
                                                  ecfg.batch_size, ecfg.item_chunk, users=ev["rows"])
            out["baselines"][name][split] = means
            if split == "test":
                per_user[f"test_{name}"] = (ev, per)
    ev, per = per_user["test"]
    users = DataVersion(data_path).sequences(["user_id"])["user_id"].to_numpy()[np.unique(ev["rows"])]  # per-user arrays: by_user
    frame = pd.DataFrame({"user_id": users, **{f"model.{k}": v for k, v in per.items()}})
    for name in ecfg.baselines:
        for k, v in per_user[f"test_{name}"][1].items():
            frame[f"{name}.{k}"] = v
    path = Path(run_dir) / "per_user_test_metrics.parquet"
    frame.to_parquet(path, index=False)
    out["per_user_metrics"] = str(path)
    return out


if __name__ == "__main__":
    # run as a program by torchrun: go through the importable module, so the config classes are
    # the ones flows.config validates against (not a second copy under __main__)
    from tasks.train import main as _main

    _main()
