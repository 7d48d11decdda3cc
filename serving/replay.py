"""The online A/B replayed offline: every logged impression (what each model ranked for a user, the
served one and the shadow) is scored against the user's next event after it (within
`serve.outcome_horizon_s`), metrics are averaged per user, and challenger vs champion is compared
per user with the offline gate's own statistics (tasks.ab.paired_stats: bootstrap CI, one-sided
test, min_users)."""

from __future__ import annotations

import bisect

import numpy as np

from serving.store import EventStore, Impression
from tasks.ab import ABConfig, paired_stats


def list_metrics(items: list[str], target: str, k: int = 10) -> dict[str, float]:
    top = items[:k]
    if target not in top:
        return {"ndcg@10": 0.0, "hr@10": 0.0}
    rank = top.index(target)
    return {"ndcg@10": float(1.0 / np.log2(rank + 2)), "hr@10": 1.0}


def outcomes(store: EventStore, horizon_s: float) -> list[tuple[Impression, str]]:
    """(impression, the item the user consumed next) for every impression with an outcome."""
    events = store.all_events()
    received = {u: [e.received for e in evs] for u, evs in events.items()}
    out = []
    for imp in store.impressions():
        times = received.get(imp.user_id)
        if not times:
            continue
        j = bisect.bisect_right(times, imp.ts)
        if j < len(times) and times[j] <= imp.ts + horizon_s:
            out.append((imp, events[imp.user_id][j].item_id))
    return out


def online_report(store: EventStore, ab: ABConfig, horizon_s: float, seed: int = 0,
                  champion: str = "champion", challenger: str = "challenger") -> dict:
    """Served-arm figures and, for impressions scored by both models, the paired comparison."""
    matched = outcomes(store, horizon_s)
    n_imp = len(store.impressions())
    served: dict[str, dict[str, list[float]]] = {}
    per_user: dict[tuple[int, int], dict[str, dict[str, list[float]]]] = {}
    m = ab.primary_metric if ab.primary_metric in ("ndcg@10", "hr@10") else "ndcg@10"
    for imp, target in matched:
        lists = imp.lists
        if imp.arm in lists:
            served.setdefault(f"{imp.arm} v{lists[imp.arm]['version']}", {}).setdefault("values", []).append(
                list_metrics(lists[imp.arm]["items"], target)[m])
        if champion in lists and challenger in lists:
            pair = (int(lists[champion]["version"]), int(lists[challenger]["version"]))
            u = per_user.setdefault(pair, {}).setdefault(imp.user_id, {"champion": [], "challenger": []})
            u["champion"].append(list_metrics(lists[champion]["items"], target)[m])
            u["challenger"].append(list_metrics(lists[challenger]["items"], target)[m])
    comparisons = []
    for (vc, vh), users in sorted(per_user.items()):
        ref = np.array([np.mean(v["champion"]) for v in users.values()])
        chal = np.array([np.mean(v["challenger"]) for v in users.values()])
        st = paired_stats(chal, ref, ab, seed)
        enough = st["n_users"] >= ab.min_users
        st["verdict"] = ("insufficient_evidence" if not enough else
                         "challenger better" if st["ci_low"] > ab.threshold and st["p_value"] < ab.alpha else
                         "no difference shown")
        comparisons.append({"champion_version": vc, "challenger_version": vh, "metric": m, **st})
    arms = {k: {"impressions_with_outcome": len(v["values"]), m: float(np.mean(v["values"]))} for k, v in served.items()}
    lines = [f"impressions: {n_imp}, with an outcome within {horizon_s:g}s: {len(matched)}"]
    lines += [f"served {k}: {v['impressions_with_outcome']} impressions, {m} {v[m]:.4f}" for k, v in arms.items()]
    for c in comparisons:
        lines.append(f"challenger v{c['challenger_version']} vs champion v{c['champion_version']} on {c['n_users']} "
                     f"users: {m} lift {c['lift']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], one-sided "
                     f"p={c['p_value']:.3g}: {c['verdict']}")
    if not comparisons:
        lines.append("no impression was scored by both champion and challenger (serve.shadow or serve.canary_fraction)")
    return {"impressions": n_imp, "with_outcome": len(matched), "served": arms, "comparisons": comparisons,
            "text": "\n".join(lines)}
