"""A time budget shapes the learning-rate schedule (issue 18): with `train.max_seconds` the warm-up
and cosine decay are laid out over the epochs that fit in the budget, so a capped run ends at a low
learning rate instead of near its peak."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from models.net import ModelConfig
from models.train import (BUDGET_WARMUP_SHARE, LRPlan, TrainConfig, Trainer, _lr_factor, budget_warmup,
                          budgeted_epochs, seed_everything)
from tasks.features import ViewsConfig, build_views
from tasks.train import build_net, data_id, load_sequences, train

SMALL = ModelConfig(dim=32, layers=1, heads=2, max_len=20, dropout=0.2)


def _run(plan: LRPlan, spe: int, budgets: list[int], configured_warm: int, planned: int) -> list[float]:
    """The factor of every step when the plan is re-laid after each epoch with budgets[i]."""
    out = []
    for epoch, budget in enumerate(budgets):
        out += [plan.factor(s) for s in range(epoch * spe, (epoch + 1) * spe)]
        plan = plan.replan((epoch + 1) * spe, budget * spe, budget_warmup(configured_warm, budget * spe, planned * spe))
    return out


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
@pytest.mark.parametrize("total,warm", [(600, 30), (36, 36), (50, 1), (7, 3)])
def test_the_initial_plan_is_the_fixed_schedule_exactly(schedule, total, warm):
    plan = LRPlan.initial(total, warm, schedule)
    assert [plan.factor(s) for s in range(total + 3)] == [_lr_factor(s, total, warm, schedule) for s in range(total + 3)]


def test_the_schedule_ends_when_the_budget_does_and_warm_up_is_bounded():
    spe, planned, warm = 10, 60, 30  # warm-up 3 epochs of 60 planned
    plan = LRPlan.initial(planned * spe, warm, "cosine")
    # after epoch 1 the budget says 8 epochs fit
    budget = budgeted_epochs(planned, 1, 3.0, 24.5, 3.0)
    assert budget == 8
    w = budget_warmup(warm, budget * spe, planned * spe)
    assert w == int(BUDGET_WARMUP_SHARE * 80) == 20
    f = _run(plan, spe, [budget] * budget, warm, planned)
    assert len(f) == 80
    assert f[9] == pytest.approx(10 / 30)  # epoch 1 ramped as configured
    assert f[10] > f[9] and f[19] == pytest.approx(1.0)  # the ramp goes on, and ends at a quarter of the budget
    assert max(range(80), key=f.__getitem__) <= BUDGET_WARMUP_SHARE * 80
    assert f[-1] < 0.01, f[-1]  # the last budgeted step is at the schedule's minimum
    assert all(b <= a for a, b in zip(f[19:], f[20:])), "decay is monotone"
    # the schedule laid over the planned 60 epochs is near its peak at that step
    assert _lr_factor(79, planned * spe, warm, "cosine") > 0.95
    # a budget that does not cut the run short keeps the configured warm-up
    assert budget_warmup(warm, planned * spe, planned * spe) == warm


@pytest.mark.parametrize("budgets", [[3, 8, 8, 8, 8, 8, 8, 8], [8, 5, 5, 5, 5], [2, 2], [60] * 3 + [6] * 3])
def test_a_re_estimated_budget_never_raises_the_rate_once_the_decay_has_started(budgets):
    spe, planned, warm = 12, 60, 36
    f = _run(LRPlan.initial(planned * spe, warm, "cosine"), spe, budgets, warm, planned)
    peak = max(range(len(f)), key=f.__getitem__)
    assert all(b <= a + 1e-12 for a, b in zip(f[peak:], f[peak + 1:])), f
    if budgets[-1] == len(budgets):  # the run ended where its last plan said
        assert f[-1] < 0.02, f[-1]


def test_budgeted_epochs_counts_the_epochs_that_can_still_finish():
    assert budgeted_epochs(60, 1, 3.0, 10.5, 3.0) == 3
    assert budgeted_epochs(60, 2, 4.0, 10.5, 1.0) == 8
    assert budgeted_epochs(60, 8, 10.0, 10.5, 1.0) == 8  # 0.5 s left: no epoch starts
    assert budgeted_epochs(60, 5, 12.0, 10.5, 1.0) == 5  # over budget: never below the epochs done
    assert budgeted_epochs(10, 2, 1.0, 100.0, 1.0) == 10  # at most the planned epochs


# ---------------------------------------------------------------------------------------- training
class EpochClock:
    """Stands in for Trainer.clock (read at the start and the end of each epoch): this process's
    epoch i takes durations[i] seconds (the last duration repeats)."""

    def __init__(self, durations: list[float]) -> None:
        self.durations, self.t, self.calls = durations, 0.0, 0

    def __call__(self) -> float:
        if self.calls % 2:
            self.t += self.durations[min(self.calls // 2, len(self.durations) - 1)]
        self.calls += 1
        return self.t


@pytest.fixture(scope="module")
def data(synth_version, tmp_path_factory) -> tuple[Path, Path]:
    return synth_version, build_views(synth_version, ViewsConfig(text_encoder="tfidf"), tmp_path_factory.mktemp("c"))


# validation skipped (eval_every): only the training loop's schedule is under test here
BUDGETED = TrainConfig(epochs=60, batch_size=64, threads=1, progress=True, max_seconds=10.5, eval_every=1000,
                       patience=10)


def _trainer(data, cfg: TrainConfig, ckpt: Path | None, durations: list[float], log=lambda m: None) -> Trainer:
    data_path, views = data
    seed_everything(0)
    tr = Trainer(build_net(data_path, views, SMALL), load_sequences(data_path, views), cfg, 0, ckpt, log,
                 data=data_id(data_path, views))
    tr.clock = EpochClock(durations)
    return tr


def test_a_budgeted_run_stops_inside_the_budget_at_a_low_rate_and_resumes_on_the_same_schedule(data, tmp_path):
    """Epoch 1 takes 3 s (one-off costs), later ones 1 s, budget 10.5 s of a planned 60 epochs:
    after epoch 1 three epochs seem to fit, from epoch 2 on eight (3 + 7 x 1 = 10 s); the ninth
    would end at 11 s and is not started. A run killed after epoch 4 resumes on the same plan."""
    logs: list[str] = []
    whole = _trainer(data, BUDGETED, None, [3.0, 1.0], logs.append)
    fit = whole.fit()
    h = whole.history
    assert fit["epochs_run"] == 8 and fit["train_seconds"] == 10.0 and fit["budgeted_epochs"] == 8
    assert [r["budgeted_epochs"] for r in h] == [3] + [8] * 7
    assert [r["epoch_seconds_est"] for r in h] == [3.0] + [1.0] * 7
    assert any(m.startswith("time budget: stopping after epoch 8") for m in logs), logs
    lrs = [r["lr"] for r in h]
    assert lrs[-1] < 0.01 * BUDGETED.lr and fit["final_lr"] == lrs[-1]
    assert all(b <= a for a, b in zip(lrs[1:], lrs[2:])), lrs
    # after epoch 1, 3 epochs seemed to fit: a quarter of them is less than the epoch already ramped,
    # so the warm-up (3 epochs configured) ended there
    assert fit["warmup_steps"] == whole.steps_per_epoch

    class Killed(Exception):
        pass

    def die_in_epoch_5(msg: str) -> None:
        if msg.startswith("epoch 5/"):
            raise Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        _trainer(data, BUDGETED, ckpt, [3.0, 1.0], die_in_epoch_5).fit()
    resumed = _trainer(data, BUDGETED, ckpt, [1.0])  # the resumed process's epochs take 1 s from the first
    assert resumed.try_resume() and resumed.plan is not None
    again = resumed.fit()
    assert [r["lr"] for r in resumed.history] == lrs
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in h]
    assert again["epochs_run"] == 8 and again["train_seconds"] == 10.0

    # resumed without the budget (max_seconds is a resumable change): the decay goes on over the
    # planned epochs from where it was, never back up
    with pytest.raises(Killed):
        _trainer(data, BUDGETED, tmp_path / "ckpt2", [3.0, 1.0], die_in_epoch_5).fit()
    free = _trainer(data, BUDGETED.model_copy(update={"max_seconds": None}), tmp_path / "ckpt2", [1.0])
    assert free.try_resume()
    free.fit()
    rates = [r["lr"] for r in free.history]
    assert len(rates) == 10 and rates[:4] == lrs[:4]  # patience 10 (no validation) ends it
    assert all(b <= a for a, b in zip(rates[3:], rates[4:])), rates


def test_a_real_capped_run_ends_converged_within_its_budget(data, tmp_path):
    """The real clock: about 0.1 s an epoch on this data, a 1.5 s budget of 500 planned epochs.
    The schedule over 500 epochs would still be warming up when the budget ends (issue 18)."""
    data_path, views = data
    cfg = TrainConfig(epochs=500, batch_size=64, threads=1, progress=True, max_seconds=1.5, eval_every=1000,
                      patience=500)
    logs: list[str] = []
    tr = train(data_path, views, SMALL, cfg, 0, tmp_path / "r", log=logs.append)
    h = tr["history"]
    epoch_times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip([{"elapsed_s": 0.0}] + h, h)]
    assert 2 <= tr["epochs_run"] < cfg.epochs, tr["epochs_run"]
    assert tr["train_seconds"] <= cfg.max_seconds + max(epoch_times), (tr["train_seconds"], epoch_times)
    assert h[-1]["lr"] < 0.2 * cfg.lr, [r["lr"] for r in h]
    assert tr["budgeted_epochs"] == h[-1]["budgeted_epochs"] and tr["epoch_seconds_est"] > 0
    assert math.isfinite(tr["final_lr"])
