"""What the service answers: requests and responses (pydantic, the API's schema) and the
`Recommender` that turns a batch of requests into answers with the loaded models and the event
store. No HTTP here: a stage testable without a server.

A request is answered from (first that applies) its own `history`; the user's stored history in the
model plus the events posted for the user since (`source` "user"); the events posted for a user the
model never saw ("events"); the most popular items ("popular"). Filters (`exclude_items`, attribute
`filters`) apply to every source; seen items are excluded as the model was evaluated (its bundle's
`exclude_seen`) unless the request says otherwise.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.config import ServeConfig
from serving.follower import Loaded, ModelFollower
from serving.store import EventStore, Impression
from tasks.bundle import Encoded


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = Field(None, min_length=1, max_length=512)
    history: list[str] | None = Field(None, description="item ids, oldest first (instead of the stored history)")
    event_types: list[str] | None = Field(None, description="one per history item")
    timestamps: list[int] | None = Field(None, description="unix seconds, one per history item, ascending")
    k: int = Field(10, ge=1)
    exclude_items: list[str] = Field([], description="never recommend these")
    filters: dict[str, list[str]] = Field({}, description="attribute -> allowed values (multi-valued attributes: "
                                                          "any of them)")
    exclude_seen: bool | None = Field(None, description="default: as the model was evaluated")

    @model_validator(mode="after")
    def _consistent(self) -> "RecommendRequest":
        n = len(self.history) if self.history is not None else None
        for name in ("event_types", "timestamps"):
            v = getattr(self, name)
            if v is not None and (n is None or len(v) != n):
                raise ValueError(f"{name} needs one entry per history item ({len(v)} given, history has {n or 0})")
        if self.timestamps is not None and any(b < a for a, b in zip(self.timestamps, self.timestamps[1:])):
            raise ValueError("timestamps must be ascending (history is oldest first)")
        return self


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[RecommendRequest] = Field(min_length=1)


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(min_length=1, max_length=512)
    event_type: str | None = Field(None, max_length=128)
    timestamp: int | None = Field(None, ge=0, description="unix seconds (default: when the service received it)")


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=512)
    events: list[EventIn] = Field(min_length=1)


class Item(BaseModel):
    item_id: str
    score: float | None
    attributes: dict = {}


class Answer(BaseModel):
    request_id: str
    user_id: str | None
    items: list[Item]
    source: str
    model: str
    version: int
    alias: str


class RequestError(ValueError):
    """A request the service cannot answer as asked (HTTP 400): names the field and the rule."""


class NotReady(LookupError):
    """No model is loaded for the alias yet (HTTP 503)."""


@dataclass
class Job:
    request: RecommendRequest
    arm: str
    request_id: str


def in_canary(user_id: str | None, fraction: float) -> bool:
    """A stable share of users: the same user is always on the same side."""
    if not user_id or fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


class Recommender:
    def __init__(self, cfg: ServeConfig, follower: ModelFollower, store: EventStore, model_name: str) -> None:
        self.cfg = cfg
        self.follower = follower
        self.store = store
        self.model_name = model_name

    def check(self, req: RecommendRequest) -> None:
        """The request rules that depend on the configuration (schema rules are pydantic's)."""
        if req.k > self.cfg.max_k:
            raise RequestError(f"k={req.k}: at most serve.max_k={self.cfg.max_k}")
        if req.history is not None and len(req.history) > self.cfg.max_history:
            raise RequestError(f"history has {len(req.history)} items: at most serve.max_history={self.cfg.max_history}")

    def log_impressions(self) -> bool:
        c = self.cfg
        return c.impressions == "on" or (c.impressions == "auto" and (c.canary_fraction > 0 or c.shadow))

    def answer(self, requests: list[RecommendRequest]) -> list[Answer]:
        """Answers in request order. Raises RequestError for a request that cannot be answered
        (unknown filter attribute); NotReady when no model is loaded."""
        for r in requests:
            self.check(r)
        champion = self.follower.get(self.cfg.alias)
        if champion is None:
            raise NotReady(f"no model loaded for @{self.cfg.alias} yet")
        challenger = self.follower.get(self.cfg.challenger_alias) if len(self.follower.aliases) > 1 else None
        arms = {self.cfg.alias: champion}
        if challenger is not None:
            arms[self.cfg.challenger_alias] = challenger
        ids = [uuid.uuid4().hex for _ in requests]
        serve_arm = [self.cfg.challenger_alias if challenger is not None and in_canary(r.user_id, self.cfg.canary_fraction)
                     else self.cfg.alias for r in requests]
        results: dict[str, list] = {}
        for arm, model in arms.items():
            # every request on its served arm; with shadow (or a canary) the other arm scores the
            # identified users too, so both lists can be compared on the same outcome
            todo = [i for i, r in enumerate(requests)
                    if serve_arm[i] == arm or (challenger is not None and r.user_id)]
            results[arm] = [None] * len(requests)
            for i, ans in zip(todo, self._rank(model, [requests[i] for i in todo])):
                results[arm][i] = ans
        out = []
        impressions = []
        now = time.time()
        for i, r in enumerate(requests):
            arm = serve_arm[i]
            model = arms[arm]
            top, scores, source = results[arm][i]
            items = [Item(item_id=str(model.scorer.item_ids[j]), score=None if s is None else float(s),
                          attributes=model.item_records[j]) for j, s in zip(top, scores)]
            out.append(Answer(request_id=ids[i], user_id=r.user_id, items=items, source=source, model=self.model_name,
                              version=model.version, alias=arm))
            if r.user_id and self.log_impressions():
                lists = {a: {"version": m.version, "items": [str(m.scorer.item_ids[j]) for j in results[a][i][0]]}
                         for a, m in arms.items() if results[a][i] is not None}
                impressions.append(Impression(ids[i], now, r.user_id, arm, model.version, lists))
        if impressions:
            self.store.log_impressions(impressions)
        return out

    def _rank(self, model: Loaded, reqs: list[RecommendRequest]) -> list[tuple[np.ndarray, list, str]]:
        """(item indices, scores, source) per request, with one forward pass for all that need the network."""
        sc = model.scorer
        n = len(reqs)
        allowed = np.ones((n, sc.n_items), bool)
        masks: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
        for i, r in enumerate(reqs):
            for col, values in r.filters.items():
                key = (col, tuple(values))
                if key not in masks:
                    try:
                        masks[key] = sc.attribute_mask(col, values)
                    except KeyError:
                        known = ", ".join(map(str, sc.item_info.columns)) or "none: this model has no item attributes"
                        raise RequestError(f"filters: unknown item attribute {col!r} (known: {known})") from None
                allowed[i] &= masks[key]
        blocked = [sc.item_idx(r.exclude_items) if r.exclude_items else np.zeros(0, np.int64) for r in reqs]
        rows = sc.user_rows([r.user_id or "" for r in reqs])
        out: list = [None] * n
        net_rows: list[int] = []
        items: list[list] = []
        etypes: list[list | None] = []
        stamps: list[list | None] = []
        sources: list[str] = []
        for i, r in enumerate(reqs):
            if r.history:
                continue
            after = int(sc.hist_last_ts[rows[i]]) if rows[i] >= 0 and sc.hist_last_ts is not None else None
            new = self.store.events(r.user_id, after, self.cfg.max_stored_events) if r.user_id else []
            if rows[i] < 0 and not new:
                continue
            net_rows.append(i)
            items.append([e.item_id for e in new])
            etypes.append([e.event_type or "" for e in new])
            stamps.append([e.ts for e in new])
            sources.append("user" if rows[i] >= 0 else "events")
        hist_rows = [i for i, r in enumerate(reqs) if r.history]
        groups: list[tuple[list[int], Encoded, list[str]]] = []
        if net_rows:
            idx = np.asarray(net_rows)
            groups.append((net_rows, sc.extended(rows[idx], items, etypes, stamps), sources))
        if hist_rows:
            hr = [reqs[i] for i in hist_rows]
            groups.append((hist_rows, sc.encode([r.history for r in hr], [r.user_id or "" for r in hr],
                                                 [r.event_types for r in hr], [r.timestamps for r in hr]),
                           ["history"] * len(hist_rows)))
        for sel, enc, src in groups:
            # seen items are excluded per request (default: as the model was evaluated), as blocked items
            seen = [enc.items[j] if (reqs[i].exclude_seen if reqs[i].exclude_seen is not None
                                     else sc.info["exclude_seen"]) else np.zeros(0, np.int64)
                    for j, i in enumerate(sel)]
            top_i, top_v, top_n = sc.top_k(enc, max(reqs[i].k for i in sel), False,
                                           [np.concatenate([blocked[i], seen[j]]) for j, i in enumerate(sel)],
                                           allowed[sel])
            for j, i in enumerate(sel):
                m = min(reqs[i].k, int(top_n[j]))
                out[i] = (top_i[j, :m], [float(x) for x in top_v[j, :m]], src[j])
        for i in range(n):
            if out[i] is None:  # nothing known about the user: the most popular allowed items
                order = sc.popular
                keep = allowed[i][order]
                keep &= ~np.isin(order, blocked[i])
                top = order[keep][: reqs[i].k]
                out[i] = (top, [None] * len(top), "popular")
        return out

    def add_events(self, req: EventsRequest) -> int:
        if len(req.events) > self.cfg.max_history:
            raise RequestError(f"events: {len(req.events)} given, at most serve.max_history={self.cfg.max_history}")
        from seqrec.encoding import normalise_label

        return self.store.append(req.user_id, [(e.item_id, normalise_label(e.event_type) if e.event_type else None,
                                                e.timestamp) for e in req.events])
