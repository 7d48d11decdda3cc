"""Data-parallel training across processes (torch DistributedDataParallel), launched by torchrun.

One training loop (models/train.py Trainer) serves both cases; a process that was not started by
torchrun is world_size 1 and none of this does anything. The choices, in one place:
- Global batch: `train.batch_size` windows per optimiser step in total, split across the processes
  (rank r takes every world_size-th window of the step's slice of one seeded permutation that all
  ranks draw alike). Steps per epoch, the learning-rate schedule and the number of windows seen per
  step are those of one process, so the same config trains to the same quality; what changes is
  that each process computes a 1/world_size share of every step.
- Gradients: averaged by DDP across ranks after each backward (each rank's loss is the mean over
  its own windows' targets).
- Randomness: parameters start equal (DDP broadcasts rank 0's), dropout and sampled-softmax
  negatives differ per rank (rank r > 0 reseeds torch from (seed, rank)); each rank's RNG state is
  checkpointed, so a resumed run continues every stream where it stopped.
- Decisions: validation is sharded by users, per-user metrics are gathered and averaged the same
  way on every rank, training time is rank 0's clock: early stopping and `max_seconds` agree.
- Files: only rank 0 writes checkpoints (atomically) and the model.
- Backend: NCCL on CUDA (one GPU per rank, `cuda:LOCAL_RANK`), gloo on CPU.
- CPU threads: `train.threads` is the machine's budget; each of W processes uses
  max(1, threads // W).
- A last partial batch too small to give every rank a window is skipped (DDP needs every rank in
  every step); with one process nothing is skipped.
- Launch: `train.processes > 1` makes tasks/train.py start torchrun; its workers die with it
  (exit_with_launcher), so a killed run never leaves ranks writing a job's checkpoints.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def from_env() -> DistContext:
    """The process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK); SINGLE otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return DistContext(rank=int(os.environ["RANK"]), world_size=world,
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def exit_with_launcher() -> None:
    """Have the kernel SIGKILL this worker when its launcher dies (Linux). torchrun starts each
    worker in a session of its own, so a SIGKILL to torchrun (or to its process group) left the
    workers training on, still writing the job's checkpoints while a re-run resumed from them."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    launcher = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != launcher:  # it died before the request was in place
        os._exit(1)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def start(ctx: DistContext, device: torch.device) -> None:
    """Join the process group (torchrun's env:// rendezvous); no-op for one process or when joined."""
    if not ctx.active or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL binds a rank to the current device
    dist.init_process_group(backend_for(device), rank=ctx.rank, world_size=ctx.world_size,
                            device_id=device if device.type == "cuda" else None)


def stop(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def threads_per_process(threads: int, ctx: DistContext) -> int:
    return max(1, threads // ctx.world_size)


def steps_per_epoch(n_windows: int, batch_size: int, ctx: DistContext) -> int:
    """Global batches per epoch. A last partial batch is kept when every rank gets a window of it
    (with one process: whenever it is not empty, i.e. ceil(n / batch_size) as before)."""
    full, rest = divmod(n_windows, batch_size)
    return full + int(rest >= ctx.world_size)


def shard(idx: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's windows of one global batch (strided: sizes differ by at most one)."""
    return idx[ctx.rank::ctx.world_size] if ctx.active else idx


def user_block(n: int, ctx: DistContext) -> tuple[int, int]:
    """This rank's contiguous block of n users for sharded evaluation (rank order = user order)."""
    per = -(-n // ctx.world_size)
    return min(n, ctx.rank * per), min(n, (ctx.rank + 1) * per)


def decorrelate_rng(seed: int, ctx: DistContext) -> None:
    """Rank r > 0 draws its own dropout masks and negatives; rank 0 keeps the single-process stream."""
    if ctx.rank:
        torch.manual_seed(seed * 1_000_003 + ctx.rank)


def wrap(net: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DDP around `net` when there are several processes. Every parameter of SeqRecNet takes part
    in every loss (disabled heads/views are not built), so find_unused_parameters stays off; a
    config that broke this fails loudly on the second step."""
    if not ctx.active:
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, output_device=device.index if ids else None)


def all_gather(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's `obj`, in rank order (pickled; for metrics and RNG states, not tensors in bulk)."""
    if not ctx.active:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    if not ctx.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Per-key mean of a dict of floats with the same keys on every rank."""
    if not ctx.active:
        return values
    keys = list(values)  # same insertion order on every rank: the same code filled it
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist())}
