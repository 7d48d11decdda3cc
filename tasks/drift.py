"""Drift between the data the champion learned from and today's data version, and a gate in front
of training (`drift.mode`: off, warn or stop).

Measured from the two content-addressed data versions (seqrec.catalog), training events only (what
each model learns from; the test events of today are judged by the A/B, not here):
- volume: events, users, items and their ratio;
- newcomers: the share of today's events by users, and on items, the champion's data never had;
- popularity shift: Jensen-Shannon distance (base 2: 0 same, 1 disjoint) of the item popularity
  distributions over the union of item ids; the same for event types;
- activity: the Kolmogorov-Smirnov statistic of events per user;
- side information: per column of the users and items tables, Kolmogorov-Smirnov for numeric
  columns, Jensen-Shannon of the value frequencies for the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from seqrec.catalog import DataVersion
from seqrec.errors import SeqrecError


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["off", "warn", "stop"] = Field(
        "warn", description="warn: report and train; stop: a failed check stops the run before training "
                            "(nothing registered); off: no report")
    max_popularity_js: float = Field(0.5, ge=0, le=1, description="Jensen-Shannon distance of item popularity")
    max_new_item_share: float = Field(0.5, ge=0, le=1, description="share of events on items the champion's data "
                                                                   "never had")
    max_new_user_share: float = Field(1.0, ge=0, le=1, description="share of events by users the champion's data "
                                                                   "never had (1: no limit; new users are normal)")
    max_volume_ratio: float = Field(10.0, ge=1, description="events today / then, or then / today, at most")
    max_column_distance: float = Field(0.5, ge=0, le=1, description="per users/items column: KS or JS distance")


class DriftStop(SeqrecError):
    """The drift gate (drift.mode=stop) failed: the run stops before training."""


@dataclass
class DriftReport:
    reference: str | None            # the champion's data version (None: nothing to compare with)
    current: str
    champion_version: int | None
    figures: dict = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    columns: list[dict] = field(default_factory=list)
    note: str | None = None

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    def summary(self) -> dict:
        return {"drift": {"reference": self.reference, "current": self.current, "champion_version": self.champion_version,
                          "passed": self.passed, "failed": [c["check"] for c in self.checks if not c["passed"]],
                          "note": self.note, **{k: v for k, v in self.figures.items() if not isinstance(v, dict)}}}

    def describe(self) -> str:
        if self.reference is None:
            return f"drift: {self.note}"
        failed = [f"{c['check']} {c['value']:.3g} > {c['limit']:.3g}" for c in self.checks if not c["passed"]]
        f = self.figures
        return (f"drift vs the champion's data {self.reference}: popularity JS {f['popularity_js']:.3f}, new items "
                f"{f['new_item_event_share']:.1%} of events, new users {f['new_user_event_share']:.1%}, events x"
                f"{f['events_ratio']:.2f}: " + ("within limits" if not failed else "OVER " + "; ".join(failed)))

    def markdown(self) -> str:
        if self.reference is None:
            return f"# Drift\n\n{self.note}\n"
        rows = "\n".join(f"| {c['check']} | {c['value']:.4g} | {c['limit']:.4g} | {'pass' if c['passed'] else 'FAIL'} |"
                         for c in self.checks)
        cols = "\n".join(f"| {c['table']}.{c['column']} | {c['measure']} | {c['value']:.4g} |" for c in self.columns)
        figs = "\n".join(f"| {k} | {v} |" for k, v in self.figures.items() if not isinstance(v, dict))
        return (f"# Drift: data {self.current} vs {self.reference} (champion version {self.champion_version})\n\n"
                f"| check | value | limit | result |\n|---|---:|---:|---|\n{rows}\n\n"
                f"| figure | value |\n|---|---|\n{figs}\n\n"
                + (f"| column | measure | distance |\n|---|---|---:|\n{cols}\n" if cols else ""))

    def write(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "drift.json").write_text(json.dumps(
            {"reference": self.reference, "current": self.current, "champion_version": self.champion_version,
             "passed": self.passed, "note": self.note, "figures": self.figures, "checks": self.checks,
             "columns": self.columns}, indent=2, default=float))
        (out_dir / "drift.md").write_text(self.markdown())
        return out_dir


def js_distance(a: pd.Series, b: pd.Series) -> float:
    """Jensen-Shannon distance (base 2) of two frequency tables indexed by value."""
    from scipy.spatial.distance import jensenshannon

    idx = a.index.union(b.index)
    p = a.reindex(idx, fill_value=0).to_numpy(np.float64)
    q = b.reindex(idx, fill_value=0).to_numpy(np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2))


@dataclass
class Counts:
    """A data version's training events, counted (never one Python object per event: 10M-event logs)."""

    items: pd.Series        # training events per item id (items with none left out)
    types: pd.Series        # per event-type name
    users: pd.Series        # per user id (users with no training event left out)

    @property
    def events(self) -> int:
        return int(self.items.sum())


def _counts(dv: DataVersion) -> Counts:
    users, flat, offsets = dv.flat_sequences(["items", "event_types"])
    n_train = users["n_train"].to_numpy(np.int64)
    # the first n_train events of each user, as one mask over the flattened events
    pos = np.arange(offsets[-1]) - np.repeat(offsets[:-1], users["n_events"].to_numpy(np.int64))
    train = pos < np.repeat(n_train, users["n_events"].to_numpy(np.int64))
    items = np.bincount(flat["items"][train].astype(np.int64), minlength=dv.n_items)
    types = np.bincount(flat["event_types"][train].astype(np.int64), minlength=len(dv.event_types))
    ids = dv.item_ids()
    keep = np.flatnonzero(items)
    vocab = pd.read_parquet(dv.vocab_dir / "users.parquet").set_index("user_idx")["user_id"].astype(str)
    per_user = pd.Series(n_train, index=vocab.reindex(users["user_idx"]).to_numpy(dtype=str))
    return Counts(pd.Series(items[keep], index=ids[keep].astype(str)),
                  pd.Series(types, index=pd.Index(dv.event_types, dtype=str)),
                  per_user[per_user > 0])


def compare(reference: Path, current: Path, cfg: DriftConfig, champion_version: int | None) -> DriftReport:
    from scipy.stats import ks_2samp

    ref, cur = DataVersion(reference), DataVersion(current)
    r, c = _counts(ref), _counts(cur)
    new_items = ~c.items.index.isin(r.items.index)
    new_users = ~c.users.index.isin(r.users.index)
    new_item_share = float(c.items[new_items].sum() / max(c.events, 1))
    new_user_share = float(c.users[new_users].sum() / max(c.events, 1))
    pop_js = js_distance(r.items, c.items)
    type_js = js_distance(r.types, c.types)
    ratio = c.events / max(r.events, 1)
    figures = {"events_then": r.events, "events_now": c.events, "events_ratio": round(ratio, 4),
               "users_then": int(len(r.users)), "users_now": int(len(c.users)),
               "items_then": int(len(r.items)), "items_now": int(len(c.items)),
               "new_items": int(new_items.sum()), "new_item_event_share": round(new_item_share, 4),
               "new_users": int(new_users.sum()), "new_user_event_share": round(new_user_share, 4),
               "popularity_js": round(pop_js, 4), "event_type_js": round(type_js, 4),
               "events_per_user_ks": round(float(ks_2samp(r.users.to_numpy(), c.users.to_numpy()).statistic), 4)}
    columns = _column_distances(ref, cur)
    checks = [
        {"check": "popularity_js", "value": pop_js, "limit": cfg.max_popularity_js},
        {"check": "new_item_event_share", "value": new_item_share, "limit": cfg.max_new_item_share},
        {"check": "new_user_event_share", "value": new_user_share, "limit": cfg.max_new_user_share},
        {"check": "volume_ratio", "value": max(ratio, 1 / ratio) if ratio > 0 else float("inf"),
         "limit": cfg.max_volume_ratio},
        *({"check": f"{c['table']}.{c['column']}", "value": c["value"], "limit": cfg.max_column_distance}
          for c in columns),
    ]
    for c in checks:
        c["passed"] = bool(c["value"] <= c["limit"])
    return DriftReport(ref.version, cur.version, champion_version, figures, checks, columns)


def _column_distances(ref: DataVersion, cur: DataVersion) -> list[dict]:
    from scipy.stats import ks_2samp

    out = []
    for table, a, b in (("users", ref.users_table(), cur.users_table()), ("items", ref.items_table(), cur.items_table())):
        if a is None or b is None:
            continue
        for col in sorted(set(a.columns) & set(b.columns) - {"user_idx", "item_idx", "user_id", "item_id"}):
            x, y = a[col].dropna(), b[col].dropna()
            if not len(x) or not len(y):
                continue
            if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
                out.append({"table": table, "column": col, "measure": "ks",
                            "value": float(ks_2samp(x.to_numpy(np.float64), y.to_numpy(np.float64)).statistic)})
            else:
                out.append({"table": table, "column": col, "measure": "js",
                            "value": js_distance(x.astype(str).value_counts(), y.astype(str).value_counts())})
    return out


def champion_data(tracking, workdir: Path) -> tuple[int | None, str | None]:
    """(the champion's version, the data version it was trained on) from the registry; (None, None)
    before a first champion."""
    from tasks.registry import open_registry

    reg = open_registry(tracking, workdir, require_shared=False)
    champion = reg.champion()
    if champion is None:
        return None, None
    return champion, (reg.version(champion).tags or {}).get("data_version")


def drift_gate(cfg: DriftConfig, tracking, workdir: Path, data_path: Path, run_dir: Path, log=print) -> DriftReport:
    """The drift report of this run's data against the champion's (written to <run_dir>/drift/), and
    the gate: a failed check warns, or under mode=stop raises DriftStop naming the checks."""
    current = DataVersion(data_path).version
    champion, ref_version = champion_data(tracking, workdir)
    if champion is None:
        rep = DriftReport(None, current, None, note="no champion yet: nothing to compare with")
    elif ref_version is None:
        rep = DriftReport(None, current, champion, note=f"champion version {champion} has no data_version tag")
    else:
        ref_path = Path(workdir) / "data" / ref_version
        if not DataVersion(ref_path).exists():
            rep = DriftReport(None, current, champion,
                              note=f"the champion's data version {ref_version} is not in {Path(workdir) / 'data'} "
                                   f"(deleted, or trained in another work directory): no drift figures")
        else:
            rep = compare(ref_path, Path(data_path), cfg, champion)
    rep.write(Path(run_dir) / "drift")
    if not rep.passed:
        failed = "; ".join(f"{c['check']} = {c['value']:.4g} above drift.max limit {c['limit']:.4g}"
                           for c in rep.checks if not c["passed"])
        if cfg.mode == "stop":
            raise DriftStop(f"drift gate (drift.mode=stop): data {rep.current} against the champion's data "
                            f"{rep.reference}: {failed}. Nothing was trained or registered; the report is "
                            f"{Path(run_dir) / 'drift' / 'drift.md'}. Raise the limits (drift.*) or set "
                            f"drift.mode=warn to train anyway")
        log(f"drift over the limits (drift.mode=warn, training anyway): {failed}")
    return rep
