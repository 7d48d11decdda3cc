"""The event store on Redis (`serve.store=redis://host:port/db`): several service replicas share
users' posted events and the impression log. Same contract as serving.store.SQLiteStore."""

from __future__ import annotations

import json
import time

from serving.store import Event, Impression

PREFIX = "seqrec:"


class RedisStore:
    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self._r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._r.ping()  # a wrong URL fails at start-up, not at the first request

    def _key(self, user_id: str) -> str:
        return f"{PREFIX}events:{user_id}"

    def append(self, user_id: str, events: list[tuple[str, str | None, int | None]]) -> int:
        now = time.time()
        rows = [json.dumps([item, etype, int(now) if ts is None else int(ts), now]) for item, etype, ts in events]
        pipe = self._r.pipeline()
        pipe.rpush(self._key(user_id), *rows)
        pipe.incrby(f"{PREFIX}count", len(rows))
        n, _ = pipe.execute()
        return int(n)

    def events(self, user_id: str, after_ts: int | None, limit: int) -> list[Event]:
        rows = [Event(*json.loads(x)) for x in self._r.lrange(self._key(user_id), -int(limit), -1)]
        return [e for e in rows if after_ts is None or e.ts > after_ts]

    def all_events(self) -> dict[str, list[Event]]:
        out = {}
        for key in self._r.scan_iter(match=f"{PREFIX}events:*", count=1000):
            user = key.decode()[len(f"{PREFIX}events:"):]
            out[user] = [Event(*json.loads(x)) for x in self._r.lrange(key, 0, -1)]
        return out

    def count(self) -> int:
        return int(self._r.get(f"{PREFIX}count") or 0)

    def log_impressions(self, rows: list[Impression]) -> None:
        if rows:
            self._r.rpush(f"{PREFIX}impressions", *[json.dumps([r.request_id, r.ts, r.user_id, r.arm, r.served_version,
                                                                r.lists]) for r in rows])

    def impressions(self) -> list[Impression]:
        rows = [json.loads(x) for x in self._r.lrange(f"{PREFIX}impressions", 0, -1)]
        return sorted((Impression(r[0], r[1], r[2], r[3], int(r[4]), r[5]) for r in rows), key=lambda i: i.ts)

    def close(self) -> None:
        self._r.close()
