"""ServeConfig: the online service's settings (`serve.*` in the pipeline config, `seqrec serve-model`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 exposes the service)")
    port: int = Field(8080, ge=1, le=65535)
    alias: str = Field("champion", description="the registered-model alias the service answers with and follows")
    poll_s: float = Field(10.0, gt=0, description="how often the aliases are checked; a move is served within about "
                                                 "this plus the new version's load time (SIGHUP checks at once)")
    store: str = Field("sqlite", description="where posted events and impressions live: `sqlite` (an embedded file, "
                                             "one replica) or a redis://host:port/db URL (several replicas)")
    store_path: str | None = Field(None, description="the SQLite file (default <workdir>/serving/events.db)")
    challenger_alias: str = Field("challenger", description="the alias of the canary/shadow model")
    canary_fraction: float = Field(0.0, ge=0, le=1, description="share of users (by a stable hash of the user id) "
                                                                "answered by the challenger")
    shadow: bool = Field(False, description="also score every user request with the other model and log both lists "
                                            "(an online A/B replayed offline, paired per user)")
    impressions: Literal["auto", "on", "off"] = Field(
        "auto", description="log what was shown (auto: when a challenger is in play, canary or shadow)")
    outcome_horizon_s: float = Field(86_400, gt=0, description="an impression's outcome is the user's next event "
                                                               "within this many seconds")
    max_k: int = Field(100, ge=1)
    max_batch: int = Field(256, ge=1, description="most requests in one POST /recommend/batch")
    max_history: int = Field(2_000, ge=1, description="most events in a request's history or one POST /events")
    max_stored_events: int = Field(1_000, ge=1, description="most recent posted events kept per user and model input")
    threads: int = Field(1, ge=1, description="torch threads of the scoring worker (the event loop needs a core too)")

    @field_validator("store")
    @classmethod
    def _known_store(cls, v: str) -> str:
        if v != "sqlite" and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be `sqlite` or a redis://host:port/db URL")
        return v
