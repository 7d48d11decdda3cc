"""Where the service keeps what arrives between trainings: users' new events (POST /events) and the
impressions it served (for the online A/B replay, serving/replay.py).

`SQLiteStore` is the embedded default (one file, one replica: WAL, one connection guarded by a
lock). Events are kept per user in arrival order with their event time (`ts`, unix seconds; the
arrival time when the client gave none) and arrival time (`received`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Event:
    item_id: str
    event_type: str | None
    ts: int
    received: float


@dataclass(frozen=True)
class Impression:
    request_id: str
    ts: float
    user_id: str
    arm: str
    served_version: int
    lists: dict[str, dict]  # alias -> {"version": v, "items": [item ids, best first]}: what each model ranked


class EventStore(Protocol):
    def append(self, user_id: str, events: list[tuple[str, str | None, int | None]]) -> int: ...
    def events(self, user_id: str, after_ts: int | None, limit: int) -> list[Event]: ...
    def log_impressions(self, rows: list[Impression]) -> None: ...
    def impressions(self) -> list[Impression]: ...
    def all_events(self) -> dict[str, list[Event]]: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,
    item_id TEXT NOT NULL, event_type TEXT, ts INTEGER NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, seq);
CREATE TABLE IF NOT EXISTS impressions (request_id TEXT PRIMARY KEY, ts REAL NOT NULL, user_id TEXT NOT NULL,
    arm TEXT NOT NULL, served_version INTEGER NOT NULL, lists TEXT NOT NULL);
"""


class SQLiteStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # the service's request threads share one connection, serialised by the lock
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash may lose the last commit, never corrupt
        self._db.executescript(SCHEMA)

    def append(self, user_id: str, events: list[tuple[str, str | None, int | None]]) -> int:
        """Store a user's new events (item id, event type or None, unix seconds or None: now), in
        order; returns how many events the store holds for the user."""
        now = time.time()
        rows = [(user_id, item, etype, int(now) if ts is None else int(ts), now) for item, etype, ts in events]
        with self._lock, self._db:
            self._db.executemany("INSERT INTO events (user_id, item_id, event_type, ts, received) VALUES (?,?,?,?,?)",
                                 rows)
            return int(self._db.execute("SELECT COUNT(*) FROM events WHERE user_id=?", (user_id,)).fetchone()[0])

    def events(self, user_id: str, after_ts: int | None, limit: int) -> list[Event]:
        """The user's most recent `limit` events with event time after `after_ts` (what the model has
        not seen: older ones are in its training data), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT item_id, event_type, ts, received FROM events WHERE user_id=? AND ts>? ORDER BY seq DESC LIMIT ?",
                (user_id, -(2**62) if after_ts is None else int(after_ts), int(limit))).fetchall()
        return [Event(*r) for r in reversed(rows)]

    def all_events(self) -> dict[str, list[Event]]:
        out: dict[str, list[Event]] = {}
        with self._lock:
            rows = self._db.execute("SELECT user_id, item_id, event_type, ts, received FROM events ORDER BY seq").fetchall()
        for u, *rest in rows:
            out.setdefault(u, []).append(Event(*rest))
        return out

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def log_impressions(self, rows: list[Impression]) -> None:
        if not rows:
            return
        with self._lock, self._db:
            self._db.executemany("INSERT OR IGNORE INTO impressions VALUES (?,?,?,?,?,?)",
                                 [(r.request_id, r.ts, r.user_id, r.arm, r.served_version, json.dumps(r.lists))
                                  for r in rows])

    def impressions(self) -> list[Impression]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM impressions ORDER BY ts").fetchall()
        return [Impression(r[0], r[1], r[2], r[3], int(r[4]), json.loads(r[5])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

