"""The A/B gate has a direction: a model most users find worse never passes on a significant
two-sided test, a truly better one does, too little evidence is no verdict, and a non-inferiority
promotion is possible on purpose."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tasks.ab import ABConfig, Side, decide, measure_latency, paired_stats

FAST = {"p50_ms": 1.0, "p95_ms": 2.0, "requests": 10}


def _sides(chal: np.ndarray, ref: np.ndarray) -> tuple[Side, Side]:
    users = np.array([f"u{i}" for i in range(len(ref))])
    same = {"hr@10": np.full(len(ref), 0.5)}  # guardrails neutral
    return (Side("v2", users, {**same, "ndcg@10": chal}, 0.5, 2), Side("v1", users, {**same, "ndcg@10": ref}, 0.5, 1))


def test_most_users_worse_fails_even_with_a_positive_mean_and_a_tiny_two_sided_p():
    """600 users, 500 lose 0.1 and 100 gain 0.6: mean lift +0.017, but a two-sided Wilcoxon p ~ 1e-19
    (significant because most users got worse) used to pass it."""
    from scipy import stats

    ref = np.full(600, 0.3)
    chal = ref + np.r_[np.full(500, -0.1), np.full(100, 0.6)]
    assert stats.wilcoxon(chal - ref).pvalue < 1e-15  # the old rule's evidence
    d = decide(ABConfig(), *_sides(chal, ref), FAST, 0)
    assert d["lift"] == pytest.approx(1 / 60) and d["ci_low"] < 0 < d["ci_high"]
    assert d["p_value"] > 0.5 and d["decision"] == "fail"
    assert d["shares"] == pytest.approx({"better": 1 / 6, "worse": 5 / 6, "tied": 0.0})
    assert any("CI lower bound" in r for r in d["reasons"]) and any("one-sided" in r for r in d["reasons"])


def test_a_truly_better_model_passes():
    rng = np.random.default_rng(0)
    ref = rng.random(600) * 0.5
    chal = np.clip(ref + rng.normal(0.03, 0.05, 600), 0, 1)
    d = decide(ABConfig(), *_sides(chal, ref), FAST, 0)
    assert d["decision"] == "pass" and d["ci_low"] > 0 and d["p_value"] < 1e-6 and d["reasons"] == []


def test_too_few_users_is_insufficient_evidence_not_a_pass():
    """A constant difference over 2 users gave p = 0 and passed."""
    d = decide(ABConfig(), *_sides(np.array([0.5, 0.5]), np.array([0.1, 0.1])), FAST, 0)
    assert d["decision"] == "insufficient_evidence" and "min_users=100" in d["reasons"][0]
    rng = np.random.default_rng(1)
    ref = rng.random(150)
    ok = decide(ABConfig(min_users=150), *_sides(ref + 0.1, ref), FAST, 0)
    assert ok["decision"] == "pass"


def test_min_lift_is_a_bound_on_the_ci_not_on_the_mean():
    rng = np.random.default_rng(2)
    ref = rng.random(400) * 0.5
    chal = ref + rng.normal(0.02, 0.05, 400)
    s = paired_stats(chal, ref, ABConfig(), 0)
    assert s["ci_low"] > 0
    # a min_lift between the CI's lower bound and the mean: the mean exceeds it, the evidence does not
    between = (s["ci_low"] + s["lift"]) / 2
    d = decide(ABConfig(min_lift=between), *_sides(chal, ref), FAST, 0)
    assert d["lift"] > between and d["decision"] == "fail"


def test_non_inferiority_promotes_as_good_within_the_margin_on_purpose():
    rng = np.random.default_rng(3)
    ref = rng.random(800) * 0.5
    slightly_worse = ref + rng.normal(-0.002, 0.01, 800)
    assert decide(ABConfig(), *_sides(slightly_worse, ref), FAST, 0)["decision"] == "fail"
    ni = decide(ABConfig(mode="non_inferiority", margin=0.01), *_sides(slightly_worse, ref), FAST, 0)
    assert ni["decision"] == "pass" and ni["threshold"] == -0.01 and ni["ci_low"] > -0.01
    much_worse = ref + rng.normal(-0.02, 0.01, 800)
    bad = decide(ABConfig(mode="non_inferiority", margin=0.01), *_sides(much_worse, ref), FAST, 0)
    assert bad["decision"] == "fail" and "-margin" in bad["reasons"][0]


@pytest.mark.parametrize("test", ["wilcoxon", "ttest"])
def test_both_tests_are_one_sided(test):
    rng = np.random.default_rng(4)
    ref = rng.random(500)
    worse = ref - np.abs(rng.normal(0.05, 0.02, 500))
    assert paired_stats(worse, ref, ABConfig(test=test), 0)["p_value"] > 0.99
    assert paired_stats(ref, worse, ABConfig(test=test), 0)["p_value"] < 1e-6


class _Service:
    """A scorer whose second timed round meets a busy machine (40 ms a call instead of ~1 ms)."""

    def __init__(self) -> None:
        self.calls = 0

    def recommend(self, frame, k=10):
        self.calls += 1
        time.sleep(0.04 if 20 < self.calls <= 30 else 0.001)


def test_latency_is_the_median_round_on_a_fixed_set_of_users():
    users = np.array([f"u{i}" for i in range(20)])
    svc = _Service()
    lat = measure_latency(svc, users, 10, 0, rounds=5)
    assert svc.calls == 10 * 6  # one warm-up pass + 5 rounds over the same 10 users
    assert lat["requests"] == 50 and len(lat["rounds_p95_ms"]) == 5
    # one busy round of five: the guardrail reads the median round, which did not see it
    assert max(lat["rounds_p95_ms"]) > 30 and lat["p95_ms"] < 20
    assert "median of the rounds' p95" in lat["method"] and lat["torch_threads"] >= 1
