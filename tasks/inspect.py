"""`seqrec data inspect`: what the pipeline would see in a user's files, and the config it needs,
before anything is written.

Reads the files (up to `max_rows` events) with the data contract's own readers, infers each column's
role from its name and values, the timestamp's kind and unit from its values, profiles the events as
the contract types them (ids, time span, activity, repeats, event types), and proposes the `data`,
`validation` and `preprocess` config that reads them. Nothing is written anywhere.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from seqrec.errors import DataContractError
from tasks.sources import expand_paths, keyed
from validation.config import ValidationConfig
from validation.contract import EventFormat, file_format, labels, map_columns, read_table_file, type_events

ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "user_id": ("user_id", "userid", "user", "uid", "customer_id", "customerid", "customer", "visitor_id",
                "visitorid", "client_id", "member_id", "account_id"),
    "item_id": ("item_id", "itemid", "item", "iid", "product_id", "productid", "product", "movie_id", "movieid",
                "sku", "article_id", "content_id", "track_id", "video_id", "asset_id"),
    "timestamp": ("timestamp", "ts", "time", "event_time", "eventtime", "datetime", "date", "created_at",
                  "event_timestamp", "unix_time", "time_stamp"),
    "event_type": ("event_type", "eventtype", "event", "action", "behavior", "behaviour", "interaction",
                   "interaction_type", "type"),
    "value": ("value", "rating", "score", "weight", "quantity"),
    "session_id": ("session_id", "sessionid", "session"),
}
UNIT_EDGES = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (float("inf"), "ns"))  # by the median |value|


class ColumnReport(BaseModel):
    name: str
    dtype: str
    role: str | None = None
    null_fraction: float
    distinct: int
    examples: list[str]


class TableReport(BaseModel):
    table: str
    files: list[str]
    formats: list[str]
    rows: int
    sampled: bool
    columns: list[ColumnReport]


class EventsProfile(BaseModel):
    events: int
    users: int
    items: int
    events_per_user_median: float
    events_per_user_mean: float
    events_per_item_median: float
    users_with_3_or_more_events: float
    timestamp_kind: str
    timestamp_unit: str | None
    time_min_utc: str | None
    time_max_utc: str | None
    repeat_rate: float  # events on an item the user had before
    consecutive_repeat_rate: float  # events on the same item as the user's previous event
    event_types: dict[str, int]
    null_event_types: int


class InspectReport(BaseModel):
    tables: list[TableReport]
    roles: dict[str, str]
    profile: EventsProfile | None
    problems: list[str]
    config: dict[str, Any]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def infer_roles(columns: list[str]) -> dict[str, str]:
    """Contract column -> the file's column, by name (the first candidate that is present wins)."""
    by_norm = {_norm(c): c for c in columns}
    roles: dict[str, str] = {}
    taken: set[str] = set()
    for role, names in ROLE_NAMES.items():
        for n in names:
            col = by_norm.get(n)
            if col is not None and col not in taken:
                roles[role] = col
                taken.add(col)
                break
    return roles


def timestamp_kind(s: pd.Series) -> tuple[str, str | None]:
    """('datetime' | 'iso-text' | 'integer', unit): the unit of integers from their magnitude."""
    if pd.api.types.is_datetime64_any_dtype(s):
        return "datetime", None
    values = s.dropna()
    numeric = pd.to_numeric(values, errors="coerce")
    if len(values) and numeric.isna().all():
        return "iso-text", None
    med = float(np.median(np.abs(numeric.dropna()))) if numeric.notna().any() else 0.0
    return "integer", next(unit for edge, unit in UNIT_EDGES if med < edge)


def _read_sample(files: list[str], max_rows: int) -> tuple[pd.DataFrame, bool]:
    frames, rows = [], 0
    for f in files:
        df = read_table_file(f)
        frames.append(df)
        rows += len(df)
        if rows >= max_rows:
            break
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    sampled = rows > max_rows or len(frames) < len(files)
    return out.head(max_rows), sampled


def _columns(df: pd.DataFrame, roles: dict[str, str]) -> list[ColumnReport]:
    role_of = {v: k for k, v in roles.items()}
    out = []
    for c in df.columns:
        s = df[c]
        out.append(ColumnReport(name=str(c), dtype=str(s.dtype), role=role_of.get(c),
                                null_fraction=float(s.isna().mean()) if len(s) else 0.0,
                                distinct=int(s.nunique(dropna=True)),
                                examples=[str(v)[:40] for v in s.dropna().drop_duplicates().head(3)]))
    return out


def _table(which: str, spec: str, max_rows: int, roles_for: bool) -> tuple[TableReport, pd.DataFrame, dict[str, str]]:
    files = expand_paths(spec, which)
    df, sampled = _read_sample(files, max_rows)
    roles = infer_roles(list(df.columns)) if roles_for else {}
    formats = sorted({"+".join(p for p in (file_format(f) or ("?", None)) if p) for f in files})
    return (TableReport(table=which, files=files, formats=formats, rows=len(df), sampled=sampled,
                        columns=_columns(df, roles)), df, roles)


def profile_events(ev: pd.DataFrame) -> dict[str, Any]:
    """Activity, repeats and time span of contract-typed events (type_events' output)."""
    ev = ev.dropna(subset=["user_id", "item_id", "timestamp"])
    per_user = ev.groupby("user_id").size()
    per_item = ev.groupby("item_id").size()
    ordered = ev.sort_values(["user_id", "timestamp"], kind="stable")
    same_user = ordered["user_id"].eq(ordered["user_id"].shift())
    consecutive = same_user & ordered["item_id"].eq(ordered["item_id"].shift())
    ts = ev["timestamp"].astype("int64")
    iso = (lambda t: pd.Timestamp(int(t), unit="s", tz="UTC").isoformat()) if len(ts) else None
    types = ev["event_type"].value_counts().to_dict() if "event_type" in ev else {}
    return {
        "events": len(ev), "users": int(per_user.size), "items": int(per_item.size),
        "events_per_user_median": float(per_user.median()) if len(per_user) else 0.0,
        "events_per_user_mean": float(per_user.mean()) if len(per_user) else 0.0,
        "events_per_item_median": float(per_item.median()) if len(per_item) else 0.0,
        "users_with_3_or_more_events": float((per_user >= 3).mean()) if len(per_user) else 0.0,
        "time_min_utc": iso(ts.min()) if iso else None, "time_max_utc": iso(ts.max()) if iso else None,
        "repeat_rate": float(ordered.duplicated(["user_id", "item_id"]).mean()) if len(ev) else 0.0,
        "consecutive_repeat_rate": float(consecutive.mean()) if len(ev) else 0.0,
        "event_types": {str(k): int(v) for k, v in types.items()},
    }


def _entity_schema(df: pd.DataFrame, key: str) -> dict[str, list[str]]:
    """A proposed data.schema section for a users/items table: numbers numeric, `|`-lists multi-valued,
    long or wordy text as text, the rest categorical."""
    prefix = "user" if key == "user_id" else "item"
    schema: dict[str, list[str]] = {}
    for c in df.columns:
        if c == key:
            continue
        s = df[c].dropna()
        if not len(s):
            continue
        if pd.api.types.is_numeric_dtype(s) or pd.to_numeric(s, errors="coerce").notna().all():
            kind = "numeric"
        elif prefix == "item" and s.astype(str).str.contains("|", regex=False).mean() > 0.2:
            kind = "multi"
        elif prefix == "item" and (s.astype(str).str.count(" ").mean() >= 1 or s.nunique() > 0.5 * len(s)):
            kind = "text"
        else:
            kind = "categorical"
        schema.setdefault(f"{prefix}_{kind}", []).append(str(c))
    return schema


def inspect(events: str, users: str | None = None, items: str | None = None, max_rows: int = 2_000_000) -> InspectReport:
    """Read and profile; raises DataContractError only when a file cannot be read at all."""
    report, df, roles = _table("events", events, max_rows, roles_for=True)
    tables, problems = [report], []
    data: dict[str, Any] = {"source": "files", "events": events}
    columns = {role: col for role, col in roles.items() if role != col}
    if columns:
        data["columns"] = columns
    missing = [r for r in ("user_id", "item_id", "timestamp") if r not in roles]
    if missing:
        problems.append(f"no column found for {missing}; name them in data.columns (found: {list(df.columns)})")
    profile = None
    kind, unit = timestamp_kind(df[roles["timestamp"]]) if "timestamp" in roles else ("missing", None)
    if unit and unit != "s":
        data["timestamp_unit"] = unit
    config: dict[str, Any] = {"data": data}
    if not missing:
        fmt = EventFormat({k: roles.get(k) for k in ("user_id", "item_id", "timestamp", "event_type", "value",
                                                    "session_id")}, unit or "s", "event")
        try:
            mapped = map_columns(df, fmt.columns, report.files[0], ("user_id", "item_id", "timestamp"),
                                 ("event_type", "value", "session_id"))
            null_types = int(labels(mapped["event_type"]).isna().sum()) if "event_type" in mapped else 0
            typed = type_events(mapped, report.files[0], fmt)
            profile = EventsProfile(**profile_events(typed), timestamp_kind=kind, timestamp_unit=unit,
                                    null_event_types=null_types)
        except DataContractError as e:
            problems.append(str(e))
    if profile is not None:
        allowed = ValidationConfig().allowed_event_types
        seen = [t for t in profile.event_types if t != "event"]  # `event`: the declared type of a null one
        if [t for t in seen if t not in allowed]:
            config["validation"] = {"allowed_event_types": sorted(set(allowed) | set(seen))}
        if profile.users_with_3_or_more_events < 0.5:
            problems.append(f"only {profile.users_with_3_or_more_events:.0%} of users have 3 or more events; "
                            "leave-one-out evaluates only those (consider eval.protocol=temporal)")
    schema: dict[str, list[str]] = {}
    for which, spec, key in (("users", users, "user_id"), ("items", items, "item_id")):
        if not spec:
            continue
        rep, tdf, _ = _table(which, spec, max_rows, roles_for=False)
        tables.append(rep)
        data[which] = spec
        tdf = keyed(tdf, key, roles.get(key, key), rep.files[0])
        if key not in tdf.columns:
            problems.append(f"{which}: the key column '{key}' is missing (found: {list(tdf.columns)[:12]})")
            continue
        schema.update(_entity_schema(tdf, key))
    if schema:
        data["schema"] = schema
    return InspectReport(tables=tables, roles=roles, profile=profile, problems=problems, config=config)
