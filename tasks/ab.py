"""Offline A/B: the challenger against the champion (re-scored on today's test users) or, when there
is no champion yet, against the configured baseline; a recorded, statistical decision.

Per user, the difference d of the primary metric (challenger - reference) on the same test users:
mean lift, a bootstrap confidence interval of the mean (scipy.stats.bootstrap), a paired one-sided
test and the shares of users better, worse and tied. The rule has a direction:

- `superiority` (default): the challenger must be better by more than `ab.min_lift`: the CI's
  lower bound exceeds min_lift AND the one-sided test of "d > min_lift" (Wilcoxon signed-rank by
  default, or a one-sample t-test on d) is significant at `ab.alpha`. A two-sided test would pass a
  model that most users find worse, simply because "different" is significant.
- `non_inferiority`: the challenger may be worse by at most `ab.margin` (a compressed, distilled or
  retrained model promoted on purpose): lower bound > -margin and the one-sided test of
  "d > -margin" significant.

Fewer than `ab.min_users` paired users is "insufficient_evidence", never a pass. Every guardrail
must hold as well: HR@10 and coverage@10 do not drop beyond their tolerances, and the p95
single-user scoring latency (median over repeated rounds on a fixed set of users) is within budget.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.metrics import KS
from seqrec.catalog import DataVersion
from seqrec.splits import TEST, targets

METRICS = [f"{m}@{k}" for k in KS for m in ("hr", "ndcg", "mrr")]


class GuardrailConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_hr10_drop: float = Field(0.01, ge=0, description="largest allowed drop of mean HR@10 (absolute)")
    max_coverage_drop: float = Field(0.25, ge=0, le=1, description="largest allowed relative drop of coverage@10")
    max_latency_ms: float = Field(50.0, gt=0, description="p95 single-user scoring latency budget (ms)")


class ABConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    primary_metric: str = "ndcg@10"
    baseline: Literal["pop", "markov"] = "markov"
    baseline_champion: bool = Field(
        True, description="no champion yet and the network does not beat the baseline (decision 'fail'): register "
                          "the baseline itself as a servable version and make it the champion")
    mode: Literal["superiority", "non_inferiority"] = Field(
        "superiority", description="superiority: better by more than min_lift; non_inferiority: worse by at most margin")
    min_lift: float = Field(0.0, description="superiority: the CI's lower bound of the mean lift must exceed this "
                                             "(absolute)")
    margin: float = Field(0.0, ge=0, description="non_inferiority: the CI's lower bound must exceed -margin (absolute)")
    min_users: int = Field(100, ge=2, description="fewer paired test users is 'insufficient_evidence', not a pass")
    alpha: float = Field(0.05, gt=0, lt=1, description="level of the one-sided test")
    test: Literal["wilcoxon", "ttest"] = "wilcoxon"
    confidence: float = Field(0.95, gt=0, lt=1)
    n_bootstrap: int = Field(2000, ge=100)
    latency_users: int = Field(100, ge=1, description="users timed with single-user requests (the same users in "
                                                      "every round)")
    latency_rounds: int = Field(5, ge=1, description="timed rounds over those users; the guardrail reads the median "
                                                     "of the rounds' p95, so one busy moment does not fail it")
    guardrails: GuardrailConfig = GuardrailConfig()

    @property
    def threshold(self) -> float:
        """The value the lift must be shown to exceed."""
        return self.min_lift if self.mode == "superiority" else -self.margin

    @field_validator("primary_metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"must be one of {METRICS}")
        return v


@dataclass
class Side:
    """Per-user metrics of one side of the comparison, aligned on `users`."""

    label: str
    users: np.ndarray
    per_user: dict[str, np.ndarray]
    coverage: float
    version: int | None = None


def paired_stats(chal: np.ndarray, ref: np.ndarray, cfg: ABConfig, seed: int) -> dict:
    """Mean lift, its bootstrap CI, the one-sided p-value of "lift > cfg.threshold" and the shares
    of users better / worse / tied."""
    from scipy import stats

    d = np.asarray(chal, np.float64) - np.asarray(ref, np.float64)
    n = len(d)
    t = cfg.threshold
    out = {"n_users": int(n), "challenger_mean": float(np.mean(chal)) if n else 0.0,
           "reference_mean": float(np.mean(ref)) if n else 0.0, "lift": float(d.mean()) if n else 0.0,
           "test": cfg.test, "alternative": f"lift > {t:g}", "confidence": cfg.confidence,
           "shares": {"better": float((d > 0).mean()) if n else 0.0, "worse": float((d < 0).mean()) if n else 0.0,
                      "tied": float((d == 0).mean()) if n else 0.0}}
    out["relative_lift"] = out["lift"] / out["reference_mean"] if out["reference_mean"] > 0 else None
    if n < 2 or np.all(d == d[0]):
        # no variation: the CI is the constant itself; whether n is enough is decide()'s min_users
        c = float(d[0]) if n else 0.0
        out.update(ci_low=c, ci_high=c, p_value=0.0 if c > t else 1.0)
        return out
    boot = stats.bootstrap((d,), np.mean, confidence_level=cfg.confidence, n_resamples=cfg.n_bootstrap,
                           method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    out["ci_low"], out["ci_high"] = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    shifted = d - t
    if cfg.test == "wilcoxon":
        nz = shifted[shifted != 0]
        out["p_value"] = float(stats.wilcoxon(nz, alternative="greater").pvalue) if len(nz) else 1.0
    else:
        out["p_value"] = float(stats.ttest_1samp(shifted, 0.0, alternative="greater").pvalue)
    return out


def baseline_side(per_user_path: Path, baseline: str, summary_baselines: dict) -> Side:
    df = pd.read_parquet(per_user_path)
    cols = {m: df[f"{baseline}.{m}"].to_numpy() for m in METRICS if f"{baseline}.{m}" in df}
    return Side(baseline, df["user_id"].to_numpy(dtype=str), cols, summary_baselines[baseline]["test"]["coverage@10"])


def challenger_side(per_user_path: Path, coverage: float, version: int) -> Side:
    df = pd.read_parquet(per_user_path)
    return Side(f"version {version}", df["user_id"].to_numpy(dtype=str),
                {m: df[f"model.{m}"].to_numpy() for m in METRICS}, coverage, version)


def rescore(scorer, data_path: Path, exclude_seen: bool, batch_size: int = 512) -> tuple[dict, dict, np.ndarray]:
    """A model bundle (any data version) on the current data version's test users, ids mapped by
    name: (mean metrics, per-user arrays, user ids)."""
    from models.metrics import evaluate_ranking

    dv = DataVersion(data_path)
    seq = dv.sequences(["user_id", "items", "event_types", "timestamps", "split"])
    n_items = dv.n_items
    catalogue = dv.item_ids()
    etype_names = np.asarray(dv.event_types, dtype=object)
    keep, end = targets(seq["split"], TEST)  # one row per test target; several per user under temporal
    items = [np.asarray(seq["items"].iat[i], np.int64) for i in keep]
    hist = [it[:e] for it, e in zip(items, end)]
    target = np.array([it[e] for it, e in zip(items, end)], np.int64)
    users = seq["user_id"].to_numpy(dtype=str)[keep]
    etypes = [etype_names[np.asarray(seq["event_types"].iat[i])[:e]] for i, e in zip(keep, end)]
    stamps = [np.asarray(seq["timestamps"].iat[i])[:e] for i, e in zip(keep, end)]

    def score(idx: np.ndarray):
        enc = scorer.encode([catalogue[hist[i]] for i in idx], list(users[idx]), [etypes[i] for i in idx],
                            [stamps[i] for i in idx])
        return scorer.scores_on(enc, catalogue)

    seen = [np.unique(h) for h in hist] if exclude_seen else None
    # -inf: items the champion never saw (it cannot recommend them); NaN would still be an error
    means, per = evaluate_ranking(score, len(keep), target, seen, n_items, batch_size, allow_neg_inf=True, users=keep)
    return means, per, users[np.unique(keep, return_index=True)[1]]


def trained_on_test(scorer, data_path: Path) -> dict:
    """How many of the current data version's test events the bundle's model trained on (bundle:
    Scorer.trained_on). Re-scoring a champion on events it learned from inflates its metrics, so the
    A/B refuses such a comparison."""
    dv = DataVersion(data_path)
    seq = dv.sequences(["user_id", "items", "timestamps", "split"])
    vocab = dv.item_vocab()
    item_id = pd.Series(vocab["item_id"].to_numpy(dtype=str), index=vocab["item_idx"].to_numpy())
    keep, pos = targets(seq["split"], TEST)
    users = seq["user_id"].to_numpy(dtype=str)[keep]
    ts = np.array([np.asarray(seq["timestamps"].iat[i])[p] for i, p in zip(keep, pos)], np.int64)
    items = item_id.reindex([np.asarray(seq["items"].iat[i])[p] for i, p in zip(keep, pos)]).to_numpy()
    hit = scorer.trained_on(users, items, ts)
    if hit is None:
        return {"checked": False, "events": 0, "test_events": int(len(keep)), "users": int(len(np.unique(keep)))}
    sample = [f"user {u}, item {i} at {t}" for u, i, t in zip(users[hit][:3], items[hit][:3], ts[hit][:3])]
    return {"checked": True, "events": int(hit.sum()), "test_events": int(len(keep)),
            "users": int(len(np.unique(keep))), "sample": sample}


def measure_latency(scorer, user_ids: np.ndarray, n: int, seed: int, rounds: int = 5) -> dict:
    """Single-user requests through the same path as the pyfunc, on a fixed (seeded) set of users,
    `rounds` times after one warm-up pass: each round's p50/p95 in milliseconds and their medians.
    The median round is what the guardrail reads: a round that met a busy moment of a shared machine
    does not decide alone."""
    import torch

    rng = np.random.default_rng(seed)
    pick = rng.choice(user_ids, size=min(n, len(user_ids)), replace=False)
    frames = [pd.DataFrame({"user_id": [u]}) for u in pick]
    for f in frames:  # warm-up pass: first-call costs (allocations, lazy tables) are not latency
        scorer.recommend(f, k=10)
    p50, p95 = [], []
    for _ in range(rounds):
        times = []
        for f in frames:
            t = time.perf_counter()
            scorer.recommend(f, k=10)
            times.append((time.perf_counter() - t) * 1000)
        p50.append(float(np.percentile(times, 50)))
        p95.append(float(np.percentile(times, 95)))
    return {"p50_ms": float(np.median(p50)), "p95_ms": float(np.median(p95)), "requests": len(frames) * rounds,
            "rounds_p95_ms": [round(x, 3) for x in p95],
            "method": f"single-user recommend() calls on the same {len(frames)} users, {rounds} rounds after a "
                      f"warm-up pass; p95 = median of the rounds' p95",
            "torch_threads": torch.get_num_threads(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def decide(cfg: ABConfig, chal: Side, ref: Side, latency: dict, seed: int) -> dict:
    m = cfg.primary_metric
    ref_pos = pd.Index(ref.users).get_indexer(chal.users)
    if (ref_pos < 0).any():
        missing = chal.users[ref_pos < 0][:5].tolist()
        raise ValueError(f"A/B: {int((ref_pos < 0).sum())} test users lack reference metrics (e.g. {missing})")
    r = {k: v[ref_pos] for k, v in ref.per_user.items()}
    out = paired_stats(chal.per_user[m], r[m], cfg, seed)
    g = cfg.guardrails
    hr_c, hr_r = float(chal.per_user["hr@10"].mean()), float(r["hr@10"].mean())
    guard = {
        "hr@10": {"challenger": hr_c, "reference": hr_r, "limit": f"drop <= {g.max_hr10_drop}",
                  "passed": hr_c >= hr_r - g.max_hr10_drop},
        "coverage@10": {"challenger": chal.coverage, "reference": ref.coverage,
                        "limit": f"relative drop <= {g.max_coverage_drop}",
                        "passed": chal.coverage >= ref.coverage * (1 - g.max_coverage_drop)},
        "latency_p95_ms": {"challenger": latency["p95_ms"], "limit": f"<= {g.max_latency_ms}",
                           "passed": latency["p95_ms"] <= g.max_latency_ms},
    }
    t = cfg.threshold
    bound = "min_lift" if cfg.mode == "superiority" else "-margin"
    reasons = []
    if not out["ci_low"] > t:
        reasons.append(f"CI lower bound {out['ci_low']:+.5f} of the lift {out['lift']:+.5f} not above {bound} {t:g}")
    if not out["p_value"] < cfg.alpha:
        reasons.append(f"one-sided p-value {out['p_value']:.4g} (lift > {t:g}) not below alpha {cfg.alpha}")
    reasons += [f"guardrail {k} failed ({v['limit']})" for k, v in guard.items() if not v["passed"]]
    decision = "pass" if not reasons else "fail"
    if out["n_users"] < cfg.min_users:  # no verdict either way on this little evidence
        decision = "insufficient_evidence"
        reasons.insert(0, f"{out['n_users']} paired test users, fewer than ab.min_users={cfg.min_users}")
    out.update(decision=decision, reasons=reasons, primary_metric=m, mode=cfg.mode, margin=cfg.margin,
               threshold=t, min_users=cfg.min_users,
               baseline=ref.label, reference_version=ref.version, challenger_version=chal.version,
               min_lift=cfg.min_lift, alpha=cfg.alpha, guardrails=guard, latency=latency,
               means={"challenger": {k: float(v.mean()) for k, v in chal.per_user.items()},
                      "reference": {k: float(v.mean()) for k, v in r.items()}})
    return out


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def write_report(out_dir: Path, d: dict, chal: Side, ref: Side) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    m = d["primary_metric"]
    r = ref.per_user[m][pd.Index(ref.users).get_indexer(chal.users)]
    diff = chal.per_user[m] - r
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    nz = diff[diff != 0]
    a.hist(nz, bins=40, color="#4c72b0")
    a.axvline(0, color="k", lw=0.8)
    a.set_title(f"per-user {m} difference (non-zero: {len(nz)}/{len(diff)})")
    a.set_xlabel(f"{chal.label} - {ref.label}")
    names = ["ndcg@10", "hr@10", "mrr@10"]
    x = np.arange(len(names))
    b.bar(x - 0.2, [d["means"]["reference"][k] for k in names], 0.4, label=ref.label, color="#999999")
    b.bar(x + 0.2, [d["means"]["challenger"][k] for k in names], 0.4, label=chal.label, color="#4c72b0")
    b.set_xticks(x, names)
    b.legend()
    b.set_title(f"decision: {d['decision'].upper()}  lift {d['lift']:+.4f} "
                f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]")
    fig.tight_layout()
    png = out_dir / "ab_chart.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    rows = "\n".join(f"| {k} | {d['means']['reference'][k]:.4f} | {d['means']['challenger'][k]:.4f} | "
                     f"{d['means']['challenger'][k] - d['means']['reference'][k]:+.4f} |" for k in METRICS)
    guards = "\n".join(f"| {k} | {_fmt(v.get('reference'))} | {_fmt(v['challenger'])} | {v['limit']} | "
                       f"{'pass' if v['passed'] else 'FAIL'} |" for k, v in d["guardrails"].items())
    rel = f" ({d['relative_lift']:+.1%})" if d.get("relative_lift") is not None else ""
    sh = d["shares"]
    rule = (f"superiority: CI lower bound > min_lift {d['min_lift']:g}" if d["mode"] == "superiority" else
            f"non-inferiority: CI lower bound > -margin {-d['margin']:g}")
    lat = d["latency"]
    md = f"""# Offline A/B: {chal.label} vs {ref.label}

**Decision: {d['decision'].upper()}**{' - ' + '; '.join(d['reasons']) if d['reasons'] else ''}

- primary metric: {m}, {d['n_users']} test users, paired per user (at least {d['min_users']} needed)
- users better / worse / tied: {sh['better']:.1%} / {sh['worse']:.1%} / {sh['tied']:.1%}
- mean lift: {d['lift']:+.5f}{rel}, {d['confidence']:.0%} bootstrap CI [{d['ci_low']:+.5f}, {d['ci_high']:+.5f}]
- rule ({rule}) and a one-sided {'Wilcoxon signed-rank' if d['test'] == 'wilcoxon' else 't'} test of
  lift > {d['threshold']:g}: p = {d['p_value']:.4g} (alpha {d['alpha']})
- scoring latency: p50 {lat['p50_ms']:.2f} ms, p95 {lat['p95_ms']:.2f} ms ({lat.get('method', 'single-user requests')})

| metric | {ref.label} | {chal.label} | difference |
|---|---|---|---|
{rows}

| guardrail | reference | challenger | limit | result |
|---|---|---|---|---|
{guards}

![A/B chart](ab_chart.png)
"""
    path = out_dir / "ab_report.md"
    path.write_text(md)
    (out_dir / "ab_decision.json").write_text(json.dumps(d, indent=2, default=str))
    return path, png


def _refuse(cfg: ABConfig, registry, run_dir: Path, version: int, champion: int, leak: dict, log) -> dict:
    """The decision when the champion cannot be judged fairly on these test events: recorded, never a pass."""
    reason = (f"champion version {champion} was trained on {leak['events']} of the {leak['test_events']} test "
              f"events of this data version (e.g. {', '.join(leak['sample'])}): its re-scored metrics would be inflated. "
              f"Evaluate on events after its training data (eval.protocol=temporal with a later eval.cutoff), "
              f"or promote deliberately with `seqrec promote --version {version} --force`")
    log(f"A/B refused: {reason}")
    out = {"decision": "refused", "reasons": [reason], "baseline": f"version {champion}", "reference_version": champion,
           "challenger_version": version, "mode": cfg.mode, "primary_metric": cfg.primary_metric,
           "threshold": cfg.threshold, "lift": None, "relative_lift": None, "ci_low": None, "ci_high": None,
           "p_value": None, "test": cfg.test, "alternative": None, "n_users": leak["users"], "shares": None,
           "guardrails": {}, "latency": None, "overlap": leak}
    ab_dir = Path(run_dir) / "ab"
    ab_dir.mkdir(parents=True, exist_ok=True)
    (ab_dir / "ab_report.md").write_text(f"# Offline A/B: version {version} vs version {champion}\n\n"
                                         f"**Decision: REFUSED** - {reason}\n")
    (ab_dir / "ab_decision.json").write_text(json.dumps(out, indent=2, default=str))
    registry.record_decision(version, out)
    return out


def run_ab(cfg: ABConfig, registry, data_path: Path, run_dir: Path, summary: dict, version: int, bundle: Path,
           exclude_seen: bool, batch_size: int, seed: int, log=print) -> dict:
    """Compare the new version with the champion (or the baseline), write the report, record the
    decision on the version. Call under `registry.lock()`: the champion read here is the one that
    `promote` task checks against."""
    import tempfile

    from tasks.bundle import Scorer
    from tasks.tracking import bundle_of

    champion = registry.reconcile(log)
    earlier = Path(run_dir) / "ab" / "ab_decision.json"
    if champion == version and earlier.is_file():  # a resumed run: an earlier attempt decided and promoted
        log(f"A/B: version {version} is already the champion; keeping the decision of an earlier attempt of this run")
        return json.loads(earlier.read_text())
    if champion is not None and champion != version and earlier.is_file():
        tags = registry.version(champion).tags or {}
        if tags.get("kind") == "baseline" and tags.get("baseline.run_id") == summary["run_id"]:
            # an earlier attempt lost against the baseline and promoted it (tasks.registry.baseline_champion)
            log(f"A/B: the {tags.get('baseline')} baseline that an earlier attempt of this run registered (version "
                f"{champion}) is the champion; keeping that attempt's decision")
            return json.loads(earlier.read_text())
    chal = challenger_side(Path(summary["per_user_metrics"]), summary["metrics"]["test"]["coverage@10"], version)
    leak = {"checked": None}
    if champion is None or champion == version:
        ref = baseline_side(Path(summary["per_user_metrics"]), cfg.baseline, summary["baselines"])
        log(f"A/B: no champion yet; version {version} against the {cfg.baseline} baseline")
    else:
        with tempfile.TemporaryDirectory(prefix="seqrec-champion-") as tmp:
            scorer = Scorer(bundle_of(registry.client, registry.name, champion, Path(tmp)))
            leak = trained_on_test(scorer, data_path)
            if leak["events"]:
                return _refuse(cfg, registry, run_dir, version, champion, leak, log)
            if not leak["checked"]:
                log(f"A/B: champion version {champion}'s bundle predates the record of its training events; "
                    f"whether it trained on these test events is not checked")
            means, per, users = rescore(scorer, data_path, exclude_seen, batch_size)
            what = f" (the {scorer.info.get('baseline')} baseline)" if scorer.kind == "baseline" else ""
            del scorer
        ref = Side(f"version {champion}", users, per, means["coverage@10"], champion)
        log(f"A/B: version {version} against champion version {champion}{what} re-scored on {len(users)} current "
            f"test users")
    latency = measure_latency(Scorer(bundle), chal.users, cfg.latency_users, seed, cfg.latency_rounds)
    decision = decide(cfg, chal, ref, latency, seed)
    decision["overlap_checked"] = leak["checked"]  # None: compared with a baseline, nothing to check
    write_report(Path(run_dir) / "ab", decision, chal, ref)
    registry.record_decision(version, decision)
    return decision
