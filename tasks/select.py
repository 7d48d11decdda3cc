"""Model selection on validation (`select.auto`): the mechanisms that win on one data shape and lose
on another are chosen per dataset, not fixed.

Each candidate is the run's configuration with a few `model.*` / `train.*` overrides. Every candidate
trains under the same time budget (`select.seconds_each`; the learning-rate schedule decays over the
budget, models/train.py), on the run's data version and views, and is scored on the validation
split (never on test). The configured model (the candidate without overrides) stays unless another
beats it by more than `select.min_gain`; the train stage then trains the winner fully. The
candidates' validation scores and the choice go into the run summary (and so into MLflow).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from seqrec.configtree import parse_override, set_dotted

if TYPE_CHECKING:
    from models.net import ModelConfig
    from models.train import TrainConfig

CONFIGURED = "configured"


class SelectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    auto: bool = Field(False, description="choose the model among `candidates` on validation before training")
    candidates: dict[str, list[str]] = Field(
        {"transitions": ["model.transition_lags=2"], "sasrec-ce": ["model.preset=sasrec-ce"]},
        description="name -> model./train. overrides of the configured model, which is always a candidate "
                    f"('{CONFIGURED}')")
    seconds_each: float = Field(60.0, gt=0, description="training time budget of each candidate")
    min_gain: float = Field(0.002, ge=0, description="validation NDCG@10 a candidate must gain over the configured "
                                                     "model to replace it (below it: noise, the configured model stays)")

    @field_validator("candidates")
    @classmethod
    def _only_model_and_train(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, sets in v.items():
            if name == CONFIGURED:
                raise ValueError(f"'{CONFIGURED}' is the configured model itself; name candidates otherwise")
            for s in sets:
                key = parse_override(s)[0]
                if not key.startswith(("model.", "train.")):
                    raise ValueError(f"select.candidates.{name}: '{s}' must set model.* or train.* (a candidate "
                                     "trains on the run's data version and views)")
        return v


def candidate_trees(tree: dict[str, Any], sel: SelectConfig) -> dict[str, dict[str, Any]]:
    """Name -> the pipeline config tree of each candidate (the configured one first). `tree` holds only
    what the user set, so a candidate's preset fills everything else (flows/config.py validates it)."""
    import copy

    out = {CONFIGURED: copy.deepcopy(tree)}
    for name, sets in sel.candidates.items():
        t = copy.deepcopy(tree)
        for s in sets:
            set_dotted(t, *parse_override(s))
        out[name] = t
    for t in out.values():
        t.setdefault("select", {})["auto"] = False
    return out


@dataclass
class Candidate:
    name: str
    overrides: list[str]
    model: "ModelConfig"
    train: "TrainConfig"


@dataclass
class Selection:
    """The candidates' validation scores and the winner."""

    winner: Candidate
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"selection": {"winner": self.winner.name, "overrides": self.winner.overrides,
                              "candidates": self.scores, "seconds": round(self.seconds, 1)}}

    def describe(self) -> str:
        ranked = sorted(self.scores.items(), key=lambda kv: -kv[1]["validation_ndcg@10"])
        return (f"select: {self.winner.name} (validation NDCG@10: "
                + ", ".join(f"{k} {v['validation_ndcg@10']:.4f}" for k, v in ranked) + ")")


def choose(scores: dict[str, float], min_gain: float) -> str:
    """The best candidate; the configured model unless another beats it by more than `min_gain`."""
    best = max(scores, key=lambda k: (scores[k], k == CONFIGURED))
    return best if scores[best] > scores[CONFIGURED] + min_gain else CONFIGURED


def select(data_path: Path, views: Path, candidates: list[Candidate], sel: SelectConfig, seed: int, exclude_seen: bool,
           item_chunk: int, run_dir: Path, log=print) -> Selection:
    """Train each candidate for `sel.seconds_each` and keep the best on validation NDCG@10."""
    from tasks.train import train

    t0 = time.perf_counter()
    scores: dict[str, dict[str, Any]] = {}
    for c in candidates:
        out = Path(run_dir) / "select" / c.name
        tcfg = c.train.model_copy(update={"max_seconds": sel.seconds_each, "progress": False})
        fit = train(data_path, views, c.model, tcfg, seed, out, log=lambda m: None, exclude_seen=exclude_seen,
                    ckpt_dir=out / "checkpoints", item_chunk=item_chunk)
        shutil.rmtree(out, ignore_errors=True)  # only the score is kept: the winner is trained again, fully
        scores[c.name] = {"validation_ndcg@10": float(fit["best_validation_ndcg@10"]), "epochs": fit["epochs_run"],
                          "seconds": round(float(fit["train_seconds"]), 1), "overrides": c.overrides}
        log(f"select: {c.name} validation NDCG@10 {scores[c.name]['validation_ndcg@10']:.4f} "
            f"({fit['epochs_run']} epochs, {fit['train_seconds']:.0f} s)")
    name = choose({k: v["validation_ndcg@10"] for k, v in scores.items()}, sel.min_gain)
    return Selection(next(c for c in candidates if c.name == name), scores, time.perf_counter() - t0)
