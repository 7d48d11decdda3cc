"""Training loop: AdamW, warm-up + cosine (laid over the epochs that fit in `max_seconds` when one is
set), clipping, early stopping on validation NDCG@10, an atomic checkpoint every epoch and resume
from it, seeds, thread count, CUDA + bf16 autocast, and the same loop data-parallel over torchrun
processes (models/distributed.py)."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from models import distributed as ddp
from models.data import Sequences, eval_inputs, eval_slice, training_windows
from models.distributed import SINGLE, DistContext
from models.metrics import (DEFAULT_ITEM_CHUNK, ChunkScores, binary_metrics, by_user, f1_threshold, rank_users,
                            summarise)
from models.net import ModelConfig, SeqRecNet
from seqrec.errors import SeqrecError
from seqrec.fsutil import flatten, stable_hash


class TrainingDivergedError(SeqrecError):
    """A non-finite loss or gradient: the run stops at `train`, nothing is saved or registered."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = 1e-2
    weight_decay: float = 0.0
    warmup_epochs: float = Field(3.0, description="1 epoch made lr 1e-2 collapse for some seeds on ml-100k")
    schedule: Literal["cosine", "constant"] = "cosine"
    clip_norm: float = 1.0
    patience: int = Field(8, ge=1, description="epochs without validation NDCG@10 improvement")
    max_seconds: float | None = Field(None, description="training time budget (validation excluded): the warm-up + "
                                                    "decay is laid out over the epochs that fit in it, and no epoch "
                                                    "starts that the estimate says cannot finish")
    window_stride: int | None = Field(None, ge=1, description="overlap training windows (default: max_len, no overlap)")
    threads: int = Field(2, ge=1, description="torch.set_num_threads on CPU, split across `processes`")
    processes: int = Field(1, ge=1, description="data-parallel training processes on this machine (torchrun + "
                                                "DDP; one GPU each on CUDA); batch_size stays the global batch")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True
    deterministic: bool = Field(True, description="torch deterministic algorithms: with more than one CPU thread "
                                                  "some kernels accumulate in a varying order otherwise")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the self-attention block: "
                                                   "auto = on CUDA only; never the LSTM (it does not compile)")
    eval_every: int = 1
    progress: bool = True
    init_from: Literal["none", "champion"] = Field(
        "none", description="champion: start from the registered champion's weights (items matched by id; "
                            "tasks/warm.py), the scheduled retrain's warm start")


def compile_attention(net: SeqRecNet, cfg: TrainConfig, device: torch.device) -> bool:
    """Compile the self-attention block in place (its state_dict keys do not change, so checkpoints
    and bundles stay compatible). STACK_NOTES: the LSTM does not compile; attention/MLP parts do.
    `auto` compiles on CUDA only: on this 2-core CPU a cold compile took 57 s and the compiled epochs
    were ~10% slower than eager (BENCHMARKS.md, benchmarks/compile_bench.py)."""
    want = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    if not want or net.attn is None:
        return False
    net.attn.compile()
    return True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def pick_device(cfg: TrainConfig, dist: DistContext = SINGLE) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        # cuBLAS needs a fixed workspace to be deterministic; kernels without a deterministic
        # variant only warn on GPU (bit-exact runs are a CPU promise, DEVELOPERS.md)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
        return torch.device("cuda", dist.local_rank) if dist.active else torch.device("cuda")
    # the thread budget is the machine's: W processes x 1 thread beat 1 x W on a small LSTM step
    torch.set_num_threads(ddp.threads_per_process(cfg.threads, dist))
    # measured: with 2 threads two identical runs gave different weights (same loss to 8 digits);
    # deterministic kernels made them bit-identical at no measurable cost on ml-100k
    torch.use_deterministic_algorithms(cfg.deterministic)
    return torch.device("cpu")


def _lr_factor(step: int, total: int, warm: int, schedule: str) -> float:
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


# a time budget that cuts the run short caps the warm-up at this share of the steps that fit in it
BUDGET_WARMUP_SHARE = 0.25


@dataclass(frozen=True)
class LRPlan:
    """The learning-rate schedule of a run with a time budget (`train.max_seconds`), laid out again
    at every epoch boundary from where the run is (`replan`), since how many epochs fit in the
    budget is known only once epochs have been timed.

    From step `start`: a linear ramp from `ramp_from` to the peak ending at step `warm_end`, then
    cosine decay whose progress goes from `decay_from` to 1 at step `total`. Re-planning keeps the
    learning rate continuous once the decay has started: it never rises again, the decay only gets
    steeper or flatter. The plan at step 0 (`initial`) is `_lr_factor` exactly."""

    start: int
    ramp_from: float
    warm_end: int
    decay_from: float
    total: int
    schedule: str

    @classmethod
    def initial(cls, total: int, warm: int, schedule: str) -> LRPlan:
        return cls(0, 0.0, warm, 0.0, total, schedule)

    def progress(self, step: int) -> float:
        """Cosine progress in [0, 1] at `step` (0 during the warm-up)."""
        if step < self.warm_end:
            return 0.0
        d0 = max(self.warm_end, self.start)
        return self.decay_from + (1 - self.decay_from) * min(1.0, (step - d0) / max(1, self.total - d0))

    def factor(self, step: int) -> float:
        if step < self.warm_end:
            return self.ramp_from + (1 - self.ramp_from) * (step - self.start + 1) / (self.warm_end - self.start)
        if self.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * self.progress(step)))

    def replan(self, step: int, total: int, warm: int) -> LRPlan:
        """The plan from `step` on, ending at `total`, warm-up ending at `warm` if still warming up.
        A warm-up that should already have ended ends now (the next step is at the peak)."""
        if step < self.warm_end:  # the ramp goes on from the current rate to the (possibly moved) peak
            if warm > step:
                return LRPlan(step, self.factor(step - 1) if step > 0 else 0.0, warm, 0.0, total, self.schedule)
            return LRPlan(step, 1.0, step, 0.0, total, self.schedule)
        return LRPlan(step, 1.0, self.warm_end, self.progress(step), total, self.schedule)

    def as_dict(self) -> dict:
        return asdict(self)


def budgeted_epochs(planned: int, done: int, elapsed_s: float, max_seconds: float, epoch_s: float) -> int:
    """Epochs the run will have trained when the budget runs out: the `done` ones plus those the
    estimate `epoch_s` says can still finish within `max_seconds`, at most `planned`."""
    left = max_seconds - elapsed_s
    more = planned - done if epoch_s <= 0 else int(max(0.0, left) // epoch_s)
    return max(done, min(planned, done + more))


def budget_warmup(configured: int, total: int, planned_total: int) -> int:
    """Warm-up steps: as configured, but at most BUDGET_WARMUP_SHARE of the steps when the budget
    cuts the run short, so that a short budget is not all warm-up."""
    if total >= planned_total:
        return configured
    return max(1, min(configured, int(BUDGET_WARMUP_SHARE * total)))


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


RESUMABLE_CHANGES = {"progress", "processes", "threads", "device", "max_seconds"}


class TrainJob(BaseModel):
    """One training job, by what it computes: the data it trains on, the model, the training
    settings, the seed and the model-selection protocol. Its `key` names the job's checkpoint
    directory and its `identity` is stored in every checkpoint, so a re-run after a crash finds and
    resumes the job, and another job's checkpoint is refused. How a job runs (RESUMABLE_CHANGES:
    processes, threads, device, time limit, progress bar) is not part of it and may change between
    the kill and the resume (a rank the checkpoint has no RNG stream for starts a fresh one)."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field("", description="the data version and views trained on (their content-hash names)")
    model: ModelConfig
    train: TrainConfig
    seed: int = 0
    exclude_seen: bool = True
    init: str = Field("", description="the weights a warm start began from (model name and version)")

    def identity(self) -> dict:
        # a cold start's identity is what it was before warm starts existed (its checkpoints resume)
        cold = self.train.init_from == "none"
        out = {"data": self.data, "model": self.model.model_dump(), "seed": self.seed,
               "exclude_seen": self.exclude_seen,
               "train": self.train.model_dump(exclude=RESUMABLE_CHANGES | ({"init_from"} if cold else set()))}
        return out if cold else {**out, "init": self.init}

    def key(self) -> str:
        return stable_hash(self.identity(), n=16)


class Trainer:
    """The training loop for one process or for each of `dist.world_size` DDP processes (the
    process group must be started, see models/distributed.py; rank 0 logs and writes files)."""

    def __init__(self, net: SeqRecNet, seqs: Sequences, cfg: TrainConfig, seed: int, ckpt_dir: Path | None,
                 log=print, exclude_seen: bool = True, dist: DistContext = SINGLE,
                 item_chunk: int = DEFAULT_ITEM_CHUNK, data: str = "", init: str = "") -> None:
        self.net, self.seqs, self.cfg, self.seed, self.dist = net, seqs, cfg, seed, dist
        self.log = log if dist.is_main else (lambda msg: None)
        self.exclude_seen = exclude_seen  # model selection uses the same protocol as the final evaluation
        self.item_chunk = item_chunk
        self.device = pick_device(cfg, dist)
        self.net.to(self.device)
        self.compiled = compile_attention(net, cfg, self.device)
        self.model = ddp.wrap(net, dist, self.device)  # the training step; `net` for everything else
        ddp.decorrelate_rng(seed, dist)
        self.ckpt_dir = ckpt_dir
        self.windows = training_windows(seqs, net.cfg.max_len, cfg.window_stride)
        self.valid = eval_inputs(seqs, net.cfg.max_len, "validation")
        self.opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = ddp.steps_per_epoch(len(self.windows["seq"]), cfg.batch_size, dist)
        pop = np.bincount(np.concatenate(seqs.train_items()), minlength=net.n_items).astype(np.float64) + 1
        self.log_q = torch.as_tensor(np.log(pop / pop.sum()), dtype=torch.float32, device=self.device)
        self.history: list[dict] = []
        self.best = {"epoch": -1, "ndcg@10": -1.0}
        self.best_state: dict | None = None
        self.start_epoch = 0
        self.train_seconds = 0.0
        # the learning-rate plan of a run with a time budget (None: the fixed schedule, `_lr_factor`);
        # a checkpoint of a budgeted run brings its plan along, so a resume continues it
        self.plan: LRPlan | None = None
        self.clock = time.perf_counter  # training time; a test may drive it
        # resuming another job's state (an explicit --ckpt-dir shared by two configs) would silently
        # continue a different run
        self.job = json.dumps(TrainJob(data=data, model=net.cfg, train=cfg, seed=seed,
                                       exclude_seen=exclude_seen, init=init).identity(), sort_keys=True)

    # ------------------------------------------------------------------ checkpoints
    def _state(self, epoch: int, rank_rng: list[torch.Tensor]) -> dict:
        np_state: tuple = np.random.get_state()  # type: ignore[assignment]  # legacy=True: a tuple
        state = {"epoch": epoch, "model": self.net.state_dict(), "opt": self.opt.state_dict(),
                 "history": self.history, "best": self.best, "best_state": self.best_state,
                 "train_seconds": self.train_seconds, "torch_rng": rank_rng[0],
                 "np_rng": np_state[1].tolist(), "np_pos": int(np_state[2]), "job": self.job}
        if self.plan is not None:
            state["lr_plan"] = self.plan.as_dict()
        if self.dist.active:
            state["torch_rng_ranks"] = rank_rng
        return state

    def _checkpoint(self, epoch: int) -> None:
        rank_rng = ddp.all_gather(torch.get_rng_state(), self.dist)  # collective: every rank calls it
        if self.ckpt_dir and self.dist.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.ckpt_dir / "last.pt", self._state(epoch, rank_rng))

    def try_resume(self) -> bool:
        path = self.ckpt_dir / "last.pt" if self.ckpt_dir else None
        if not path or not path.is_file():
            return False
        st = torch.load(path, map_location=self.device, weights_only=True)
        if st.get("job", self.job) != self.job:  # checkpoints from before the key resume as they did
            ours, theirs = flatten(json.loads(self.job)), flatten(json.loads(st["job"]))
            diff = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here"
                             for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k))
            raise ValueError(f"checkpoint {path} belongs to another training job ({diff}): resume with the same "
                             f"configuration, or remove the checkpoint / use another checkpoint directory")
        self.net.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.history, self.best, self.best_state = st["history"], st["best"], st["best_state"]
        self.train_seconds = st["train_seconds"]
        if st.get("lr_plan"):
            self.plan = LRPlan(**st["lr_plan"])
        ranks = st.get("torch_rng_ranks") or [st["torch_rng"]]
        if self.dist.rank < len(ranks):
            torch.set_rng_state(ranks[self.dist.rank].cpu())
        else:  # written by fewer processes: this rank starts a fresh stream of its own
            ddp.decorrelate_rng(self.seed + st["epoch"] + 1, self.dist)
        np.random.set_state(("MT19937", np.asarray(st["np_rng"], np.uint32), st["np_pos"], 0, 0.0))
        self.start_epoch = st["epoch"] + 1
        self.log(f"resuming from checkpoint {path} (epoch {st['epoch'] + 1} done)")
        return True

    # ------------------------------------------------------------------ loop
    def _batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda":  # pinned pages let the copy overlap the previous step
            return {k: v[idx].pin_memory().to(self.device, non_blocking=True) for k, v in self.windows.items()}
        return {k: v[idx] for k, v in self.windows.items()}

    def fit(self) -> dict:
        cfg = self.cfg
        spe = self.steps_per_epoch
        total = cfg.epochs * spe
        warm = max(1, int(cfg.warmup_epochs * spe))
        n = len(self.windows["seq"])
        autocast = self.device.type == "cuda" and cfg.bf16
        stale = sum(1 for h in self.history if h["epoch"] > self.best["epoch"])
        # A time budget re-lays the schedule after every epoch over the epochs that fit in it (LRPlan).
        # Every input is the same on every rank (rank 0's clock, broadcast), so DDP ranks agree on the
        # budgeted epochs, the learning rate and the epoch they stop after without another collective.
        if cfg.max_seconds and self.plan is None:
            self.plan = LRPlan.initial(total, warm, cfg.schedule)
        times: list[float] = []  # this process's epoch times: a resumed run may run on other hardware
        last = self.history[-1] if self.history else {}  # a resumed run's decisions until it has its own
        budget, epoch_s = last.get("budgeted_epochs", cfg.epochs), last.get("epoch_seconds_est", 0.0)
        for epoch in range(self.start_epoch, cfg.epochs):
            if stale >= cfg.patience or (cfg.max_seconds and self.train_seconds >= cfg.max_seconds):
                break
            if cfg.max_seconds and times and epoch >= budget:  # the estimate says it would not finish
                self.log(f"time budget: stopping after epoch {epoch} ({self.train_seconds:.1f}s of "
                         f"{cfg.max_seconds:g}s trained, an epoch takes ~{epoch_s:.1f}s)")
                break
            t0 = self.clock()
            self.net.train()
            g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            perm = torch.randperm(n, generator=g)  # the same on every rank: ranks take disjoint shares
            sums: dict[str, float] = {}
            for b in range(self.steps_per_epoch):
                batch = self._batch(ddp.shard(perm[b * cfg.batch_size:(b + 1) * cfg.batch_size], self.dist))
                step = epoch * self.steps_per_epoch + b
                for grp in self.opt.param_groups:
                    grp["lr"] = cfg.lr * (self.plan.factor(step) if self.plan is not None
                                          else _lr_factor(step, total, warm, cfg.schedule))
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                    losses = self.model(batch, self.log_q)
                self.opt.zero_grad(set_to_none=True)
                self._check_finite("loss", losses["total"], epoch, b, losses)
                losses["total"].backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.clip_norm)
                self._check_finite("gradient norm", grad_norm, epoch, b, losses)
                self.opt.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            # rank 0's clock for everyone, so `max_seconds` stops every rank after the same epoch
            before = self.train_seconds
            self.train_seconds = ddp.broadcast(self.train_seconds + self.clock() - t0, self.dist)
            times.append(self.train_seconds - before)
            sums = ddp.mean_over_ranks(sums, self.dist)
            val = self.evaluate(self.valid, self.exclude_seen)[0] if (epoch + 1) % cfg.eval_every == 0 else {}
            rec: dict[str, Any] = {"epoch": epoch, "elapsed_s": round(self.train_seconds, 3),
                   "loss": {k: v / self.steps_per_epoch for k, v in sums.items()}, "validation": val,
                   "lr": self.opt.param_groups[0]["lr"]}  # the rate of the epoch's last step
            if self.plan is not None:
                # epoch 1 carries one-off costs (allocation, compilation): later epochs estimate without it
                epoch_s = sum(times[1:]) / (len(times) - 1) if len(times) > 1 else times[0]
                budget = (budgeted_epochs(cfg.epochs, epoch + 1, self.train_seconds, cfg.max_seconds, epoch_s)
                          if cfg.max_seconds else cfg.epochs)
                self.plan = self.plan.replan((epoch + 1) * spe, budget * spe, budget_warmup(warm, budget * spe, total))
                rec["budgeted_epochs"], rec["epoch_seconds_est"] = budget, round(epoch_s, 3)
            self.history.append(rec)
            if val and val["ndcg@10"] > self.best["ndcg@10"]:
                self.best = {"epoch": epoch, "ndcg@10": val["ndcg@10"]}
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
                stale = 0
            else:
                stale += 1
            if cfg.progress:
                self.log(f"epoch {epoch + 1}/{cfg.epochs} loss {rec['loss']['total']:.4f} "
                         f"val ndcg@10 {val.get('ndcg@10', float('nan')):.4f} hr@10 {val.get('hr@10', float('nan')):.4f} "
                         f"[{self.train_seconds:.1f}s]"
                         + (f" lr {rec['lr']:.3g}, budget {budget} epochs of ~{epoch_s:.1f}s" if self.plan else ""))
            self._checkpoint(epoch)
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        out: dict[str, Any] = {"best_epoch": self.best["epoch"], "best_validation_ndcg@10": self.best["ndcg@10"],
                               "train_seconds": round(self.train_seconds, 3), "epochs_run": len(self.history)}
        if self.plan is not None:  # what the time budget decided (the last estimate), for the run summary
            out.update({"budgeted_epochs": budget, "epoch_seconds_est": round(epoch_s, 3),
                        "warmup_steps": self.plan.warm_end,
                        "final_lr": self.history[-1]["lr"] if self.history else None})
        return out

    def _check_finite(self, what: str, value: torch.Tensor, epoch: int, step: int, losses: dict) -> None:
        """A non-finite loss or gradient stops the run: continuing would keep a 'best' epoch of a model
        whose weights are about to become NaN (or already are), and register it."""
        if bool(torch.isfinite(value.detach()).all()):
            return
        parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        lr = self.opt.param_groups[0]["lr"]
        raise TrainingDivergedError(
            f"training diverged: non-finite {what} at epoch {epoch + 1}, step {step + 1} of {self.steps_per_epoch} "
            f"(lr {lr:.3g}; losses {parts}). No model was written or registered. Change: train.lr (now "
            f"{self.cfg.lr:g}; try {self.cfg.lr / 10:g}), train.warmup_epochs (now {self.cfg.warmup_epochs:g}), "
            f"train.clip_norm (now {self.cfg.clip_norm:g})"
            + (", train.bf16=false" if self.device.type == "cuda" and self.cfg.bf16 else ""))

    def evaluate(self, ev: dict, exclude_seen: bool = True, batch_size: int = 512) -> tuple[dict, dict, dict]:
        return evaluate_model(self.net, ev, exclude_seen, batch_size, self.device, self.item_chunk, self.dist)


# measured (MKL sgemm, torch 2.13 CPU): a product over fewer than 12 item columns can round
# differently from the same columns of the whole product, so a narrow last chunk joins the one before
MIN_ITEM_CHUNK = 16


@torch.no_grad()
def evaluate_model(net: SeqRecNet, ev: dict, exclude_seen: bool = True, batch_size: int = 512,
                   device: torch.device | None = None, item_chunk: int = DEFAULT_ITEM_CHUNK,
                   dist: DistContext = SINGLE, thresholds: dict[str, float] | None = None) -> tuple[dict, dict, dict]:
    """Full-ranking metrics (means, per-user arrays) and auxiliary-head metrics on one split.

    Auxiliary heads are scored at `thresholds[head]` (default 0.5); each head's result also names
    the threshold with the best F1 on this split (`f1_threshold`), for the caller to carry from
    validation to test.

    The catalogue is scored `item_chunk` items at a time (models/metrics.py); with several
    processes each ranks its own block of users and all ranks get the same, gathered result."""
    device = device or next(net.parameters()).device
    net.eval()
    table = net.items.table()
    engage_scores: list[np.ndarray] = []
    attr_scores: list[np.ndarray] = []
    lo, hi = ddp.user_block(len(ev["target"]), dist) if dist.active else (0, len(ev["target"]))
    part = eval_slice(ev, lo, hi) if dist.active else ev

    def score(idx: np.ndarray) -> ChunkScores:
        seq = part["seq"][idx].to(device)
        prefix = (part["pre_n"][idx], part["pre_attr"][idx]) if "pre_n" in part else None
        h = net.last_state(seq, part["etype"][idx].to(device), part["gap"][idx].to(device),
                           part["user"][idx].to(device), table, prefix)
        if net.engage_head is not None:
            engage_scores.append(torch.sigmoid(net.engage_head(h)).squeeze(-1).float().cpu().numpy())
        if net.attr_head is not None:
            attr_scores.append(torch.sigmoid(net.attr_head(h)).float().cpu().numpy())
        # one chunk = the whole catalogue: h @ table.T exactly as before chunking
        rank = net.rank(h, seq, table)
        return lambda a, b: rank(a, b).float()

    # a diverged or collapsed network is an error here, before anything can register it
    arrays, top = rank_users(score, len(part["target"]), part["target"],
                             part["seen"] if exclude_seen else None, net.n_items, batch_size, item_chunk,
                             min_chunk=MIN_ITEM_CHUNK, reject_constant=True)
    if dist.active:  # every rank ends with every user's results, in user order
        parts = ddp.all_gather((arrays, top, engage_scores, attr_scores), dist)
        arrays = {k: np.concatenate([p[0][k] for p in parts if k in p[0]]) for k in parts[0][0]}
        top = np.concatenate([p[1] for p in parts])
        engage_scores = [s for p in parts for s in p[2]]
        attr_scores = [s for p in parts for s in p[3]]
    arrays = by_user(arrays, ev["rows"])  # a user with several test targets (temporal) counts once
    means = summarise(arrays, top, net.n_items)
    aux: dict = {}
    heads = {}
    if engage_scores:
        heads["engage"] = (ev["engage"], np.concatenate(engage_scores))
    if attr_scores:  # micro-averaged over (user, attribute) pairs: the next item's genres
        assert net.attr_target is not None  # attribute scores exist only with the attribute head
        heads["attr"] = (net.attr_target[torch.as_tensor(ev["target"])].numpy().ravel(),
                         np.concatenate(attr_scores).ravel())
    for head, (truth, scores) in heads.items():
        aux[head] = {**binary_metrics(truth, scores, (thresholds or {}).get(head, 0.5)),
                     "f1_threshold": f1_threshold(truth, scores)}
    return means, arrays, aux


def progress_printer(prefix: str = ""):
    def log(msg: str) -> None:
        print(prefix + msg, file=sys.stderr, flush=True)
    return log
