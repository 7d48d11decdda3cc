"""Configuration of the data-quality gate."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from seqrec.encoding import normalise_labels

MIN_TIMESTAMP = 631_152_000  # 1990-01-01T00:00:00Z


class ValidationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["fail", "quarantine"] = Field(
        "fail", description="fail: stop the flow; quarantine: drop offending rows up to max_quarantine_fraction")
    max_quarantine_fraction: float = Field(0.01, ge=0.0, le=1.0)
    allowed_event_types: list[str] = Field(["view", "click", "cart", "purchase", "rate"],
                                           description="compared with the data as normalised (case, whitespace)")
    value_min: float = -1e6
    value_max: float = 1e6
    max_future_skew_s: int = Field(86_400, description="tolerated clock skew past 'now'")
    unknown_item_tolerance: float = Field(0.0, ge=0.0, le=1.0,
                                          description="fraction of events whose item is not in the items table")
    unknown_user_tolerance: float = Field(0.0, ge=0.0, le=1.0)
    numeric_abs_max: float = Field(1e9, description="profile/attribute numerics must be finite and within +-this")
    min_eval_users: int = Field(2, ge=1, description="users with a test event, and users with a validation event, "
                                                     "needed to evaluate and compare models (the protocol places them)")
    max_id_length: int = Field(512, ge=1, description="user and item ids longer than this many characters "
                                                      "break the contract (a corrupt row, not an id)")
    docs_max_pieces: int = Field(16, description="Data Docs pages for at most this many event partitions (+ failing ones)")

    @field_validator("allowed_event_types")
    @classmethod
    def _normalised(cls, v: list[str]) -> list[str]:
        return normalise_labels(v) or []
