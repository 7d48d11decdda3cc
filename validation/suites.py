"""Great Expectations 1.x suites for raw events, users, items and processed sequences.

One rule table drives three things: the GX expectations (the authoritative gate and the Data Docs),
the row masks used by `quarantine` mode, and the merge of per-partition results (large event sets
are validated partition by partition, in parallel, then merged by counts).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import pyarrow as pa

from seqrec.errors import DataContractError
from seqrec.splits import TEST, VALID, Cutoffs, split_codes
from validation.config import MIN_TIMESTAMP, ValidationConfig

Kind = Literal["not_null", "between", "in_set", "unique", "rows_at_least", "max_length"]
GX_NAMES = {"not_null": "expect_column_values_to_not_be_null", "between": "expect_column_values_to_be_between",
            "in_set": "expect_column_values_to_be_in_set", "unique": "expect_column_values_to_be_unique",
            "rows_at_least": "expect_table_row_count_to_be_between",
            "max_length": "expect_column_value_lengths_to_be_between"}


@dataclass(frozen=True)
class Rule:
    column: str
    kind: Kind
    text: str
    min: float | None = None
    max: float | None = None
    values: tuple = ()
    mostly: float = 1.0
    row_level: bool = True
    report_column: str | None = None  # the user's column, when `column` is derived (e.g. _item_known)

    def expectation(self):
        import great_expectations as gx

        e = gx.expectations
        kw: dict[str, Any] = {"mostly": self.mostly} if self.mostly < 1.0 else {}
        if self.kind == "not_null":
            return e.ExpectColumnValuesToNotBeNull(column=self.column, **kw)
        if self.kind == "between":
            return e.ExpectColumnValuesToBeBetween(column=self.column, min_value=self.min, max_value=self.max, **kw)
        if self.kind == "in_set":
            return e.ExpectColumnValuesToBeInSet(column=self.column, value_set=list(self.values), **kw)
        if self.kind == "unique":
            return e.ExpectColumnValuesToBeUnique(column=self.column)
        if self.kind == "max_length":
            return e.ExpectColumnValueLengthsToBeBetween(column=self.column, max_value=int(self.max or 0), **kw)
        return e.ExpectTableRowCountToBeBetween(min_value=int(self.min or 1))

    def violations(self, df: pd.DataFrame) -> pd.Series:
        """Rows that break the rule (the same semantics as the GX expectation; nulls pass value rules)."""
        s = df[self.column]
        if self.kind == "not_null":
            return s.isna()
        if self.kind == "between":
            v = pd.to_numeric(s, errors="coerce").astype("float64")
            bad = pd.Series(False, index=df.index)
            if self.min is not None:
                bad |= v < self.min
            if self.max is not None:
                bad |= v > self.max
            return bad | (np.isinf(v) & v.notna())
        if self.kind == "in_set":
            return s.notna() & ~s.isin(list(self.values))
        if self.kind == "unique":
            return s.duplicated(keep=False) & s.notna()
        if self.kind == "max_length":
            return (s.astype("string").str.len() > (self.max or 0)).fillna(False).astype(bool)
        return pd.Series(False, index=df.index)


@dataclass
class ExpectationOutcome:
    rule: Rule
    element_count: int = 0
    unexpected_count: int = 0
    sample: list = field(default_factory=list)
    file: str | None = None
    quarantined: bool = False  # failed, but its rows are dropped in quarantine mode

    @property
    def success(self) -> bool:
        if self.quarantined:
            return True
        if self.rule.kind == "rows_at_least":
            return self.element_count >= (self.rule.min or 1)
        if self.element_count == 0:
            return True
        return self.unexpected_count / self.element_count <= 1.0 - self.rule.mostly + 1e-12

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.rule.column if self.rule.kind != "rows_at_least" else None,
            "expectation": GX_NAMES[self.rule.kind],
            "rule": self.rule.text,
            "mostly": self.rule.mostly,
            "success": self.success,
            "quarantined": self.quarantined,
            "element_count": self.element_count,
            "unexpected_count": self.unexpected_count,
            "unexpected_fraction": (self.unexpected_count / self.element_count) if self.element_count else 0.0,
            "sample": [_jsonable(v) for v in self.sample[:5]],
            "file": self.file,
        }


@dataclass
class TableResult:
    table: str
    rules: list[Rule]
    outcomes: list[ExpectationOutcome]
    rows: int = 0
    files: list[str] = field(default_factory=list)
    quarantined_rows: int = 0
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def quarantine_rules(self) -> list[Rule]:
        """Row rules whose offending rows preprocessing must drop (empty unless quarantined)."""
        return [o.rule for o in self.outcomes if o.quarantined]

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "success": self.success, "rows": self.rows, "files": self.files,
                "quarantined_rows": self.quarantined_rows, "seconds": round(self.seconds, 3),
                "expectations": [o.to_dict() for o in self.outcomes]}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        return v.item()
    if v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)


# --------------------------------------------------------------------------- rule tables


def event_rules(cfg: ValidationConfig, columns: list[str], now: int | None = None,
                check_items: bool = False, check_users: bool = False, null_event_type: str | None = "event",
                timestamp_unit: str = "s") -> list[Rule]:
    """The raw events' rules; `null_event_type` is the declared type of a null event type (None: a null
    event type breaks a rule), `timestamp_unit` only words the hint of the time-range rule."""
    now = int(now or time.time())
    hint = "" if timestamp_unit != "s" else " (integer timestamps in ms/us/ns: set data.timestamp_unit)"
    rules = [
        Rule("user_id", "rows_at_least", "events table must not be empty", min=1, row_level=False),
        Rule("user_id", "not_null", "user_id must not be null"),
        Rule("item_id", "not_null", "item_id must not be null"),
        Rule("user_id", "max_length", f"user_id must be at most {cfg.max_id_length} characters "
             "(validation.max_id_length)", max=cfg.max_id_length),
        Rule("item_id", "max_length", f"item_id must be at most {cfg.max_id_length} characters "
             "(validation.max_id_length)", max=cfg.max_id_length),
        Rule("timestamp", "not_null", "timestamp must not be null"),
        Rule("timestamp", "between", f"timestamp must be unix seconds between 1990-01-01 and now{hint}",
             min=MIN_TIMESTAMP, max=now + cfg.max_future_skew_s),
    ]
    if "event_type" in columns:
        allowed = list(dict.fromkeys([*cfg.allowed_event_types, *([null_event_type] if null_event_type else [])]))
        if null_event_type is None:
            rules.append(Rule("event_type", "not_null", "event_type must not be null (data.null_event_type is "
                              "unset)"))
        rules.append(Rule("event_type", "in_set", f"event_type must be one of {allowed} "
                          "(validation.allowed_event_types)", values=tuple(allowed)))
    if "value" in columns:
        rules.append(Rule("value", "between", f"value must be finite and within [{cfg.value_min}, {cfg.value_max}]",
                          min=cfg.value_min, max=cfg.value_max))
    if check_items:
        rules.append(Rule("_item_known", "in_set",
                          f"item_id must exist in the items table (tolerated fraction {cfg.unknown_item_tolerance})",
                          values=(True,), mostly=1.0 - cfg.unknown_item_tolerance, row_level=False,
                          report_column="item_id"))
    if check_users:
        rules.append(Rule("_user_known", "in_set",
                          f"user_id must exist in the users table (tolerated fraction {cfg.unknown_user_tolerance})",
                          values=(True,), mostly=1.0 - cfg.unknown_user_tolerance, row_level=False,
                          report_column="user_id"))
    return rules


def entity_rules(key: str, table: str, numeric: list[str], cfg: ValidationConfig) -> list[Rule]:
    rules = [
        Rule(key, "rows_at_least", f"{table} table must not be empty", min=1, row_level=False),
        Rule(key, "not_null", f"{key} must not be null"),
        Rule(key, "unique", f"{key} must be unique in the {table} table", row_level=False),
    ]
    for col in numeric:
        rules.append(Rule(col, "between", f"{col} must be finite and within +-{cfg.numeric_abs_max:g}",
                          min=-cfg.numeric_abs_max, max=cfg.numeric_abs_max))
    return rules


def sequence_rules(n_items: int, n_event_types: int, min_eval_users: int = 2) -> list[Rule]:
    return [
        Rule("user_idx", "rows_at_least", "sequences must not be empty", min=1, row_level=False),
        Rule("eval_users", "between", f"at least {min_eval_users} users need a test event (leave-one-out: 3 or more "
             f"events; temporal: events before and after eval.cutoff)", min=min_eval_users, row_level=False,
             report_column="user_id"),
        Rule("valid_users", "between", f"at least {min_eval_users} users need a validation event (model selection; "
             f"temporal: an event between eval.validation_cutoff and eval.cutoff after a training event)",
             min=min_eval_users, row_level=False, report_column="user_id"),
        Rule("user_idx", "unique", "one row per user", row_level=False),
        Rule("min_item", "between", f"item indices must be in [2, {n_items + 1}] (0=pad, 1=unknown)",
             min=2, max=n_items + 1, row_level=False),
        Rule("max_item", "between", f"item indices must be in [2, {n_items + 1}]", min=2, max=n_items + 1, row_level=False),
        Rule("min_event_type", "between", f"event type indices must be in [1, {n_event_types}] (0 = padding)",
             min=1, max=n_event_types, row_level=False),
        Rule("max_event_type", "between", f"event type indices must be in [1, {n_event_types}]",
             min=1, max=n_event_types, row_level=False),
        Rule("time_sorted", "in_set", "timestamps must be non-decreasing within a user", values=(True,), row_level=False),
        Rule("split_ok", "in_set", "split markers must follow the evaluation protocol (seqrec/splits.py)",
             values=(True,), row_level=False),
        Rule("lengths_ok", "in_set", "all per-event lists of a user must have the same length", values=(True,), row_level=False),
    ]


def sequence_checks(part: "pa.Table", cuts: Cutoffs | None = None) -> pd.DataFrame:
    """Per-user scalar invariants of one part of sequences.parquet (vectorised over the flattened
    lists: a part holds millions of events). `eval_users` is filled in once all parts are merged."""
    import pyarrow.compute as pc

    def flat(col: str) -> tuple[np.ndarray, np.ndarray]:
        arr = part[col].combine_chunks()
        return pc.list_flatten(arr).to_numpy(zero_copy_only=False), pc.list_value_length(arr).to_numpy(
            zero_copy_only=False).astype(np.int64)

    items, n = flat("items")
    starts = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
    nonempty = n > 0

    def per_user(values: np.ndarray, ufunc) -> np.ndarray:
        out = np.full(len(n), -1, np.int64)
        if nonempty.any():
            out[nonempty] = ufunc.reduceat(values.astype(np.int64), starts[nonempty])
        return out

    etypes, _ = flat("event_types")
    ts, n_ts = flat("timestamps")
    split, n_split = flat("split")
    _, n_gap = flat("gap_buckets")
    # time order: every within-user step is >= 0 (steps across a user boundary do not count)
    user_of = np.repeat(np.arange(len(n)), n)
    step_bad = np.zeros(len(ts), bool)
    if len(ts) > 1 and (n == n_ts).all():
        step_bad[1:] = (np.diff(ts) < 0) & (user_of[1:] == user_of[:-1])
    # split markers as the protocol places them (leave-one-out, or the temporal cut-offs)
    ok_lengths = (n == n_split).all() and (n == n_ts).all()
    want = split_codes(n, ts, cuts)[0] if ok_lengths else None
    split_bad = split.astype(np.int8) != want if ok_lengths else np.ones(len(items), bool)
    def has(code: int) -> np.ndarray:
        return (np.bincount(user_of[split.astype(np.int8) == code], minlength=len(n)) > 0 if ok_lengths else
                np.zeros(len(n), bool))
    return pd.DataFrame({
        "user_idx": part["user_idx"].to_numpy(),
        "eval_users": np.zeros(len(n), np.int64),
        "valid_users": np.zeros(len(n), np.int64),
        "has_test": has(TEST),
        "has_valid": has(VALID),
        "min_item": per_user(items, np.minimum),
        "max_item": per_user(items, np.maximum),
        "min_event_type": per_user(etypes, np.minimum),
        "max_event_type": per_user(etypes, np.maximum),
        "time_sorted": ~np.bincount(user_of[step_bad], minlength=len(n)).astype(bool),
        "split_ok": ~np.bincount(user_of[split_bad], minlength=len(n)).astype(bool) if len(split_bad) == len(items)
        else np.zeros(len(n), bool),
        "lengths_ok": (n == n_ts) & (n == n_gap) & (n == n_split),
    })


def merge_sequence_checks(parts: list[pd.DataFrame]) -> pd.DataFrame:
    checks = pd.concat(parts, ignore_index=True) if parts else sequence_checks_empty()
    # a table-level count repeated per row, so the rule table can express it
    checks["eval_users"] = int(checks["has_test"].sum())
    checks["valid_users"] = int(checks["has_valid"].sum())
    return checks.drop(columns=["has_test", "has_valid"])


def sequence_checks_empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
        ("user_idx", "int32"), ("eval_users", "int64"), ("valid_users", "int64"), ("has_test", bool),
        ("has_valid", bool), ("min_item", "int64"), ("max_item", "int64"), ("min_event_type", "int64"),
        ("max_event_type", "int64"), ("time_sorted", bool), ("split_ok", bool), ("lengths_ok", bool))})


# --------------------------------------------------------------------------- running


_GX_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _ephemeral_context():
    gx = _quiet_import()

    ctx = gx.get_context(mode="ephemeral")
    _quiet(ctx)
    return ctx


def _quiet_import():
    """great_expectations, with the logger it sets to INFO on import (a line per context created) at WARNING."""
    import great_expectations as gx

    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    return gx


def _quiet(ctx) -> None:
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # noqa: BLE001 - progress bars are cosmetic
        pass


def _suite(rules: list[Rule], name: str):
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=name)
    for r in rules:
        suite.add_expectation(r.expectation())
    return suite


def run_gx(ctx, table: str, df: pd.DataFrame, rules: list[Rule], with_docs: bool = False, tag: str = "all"):
    """Validate one frame with GX; returns the GX suite validation result."""
    import great_expectations as gx

    ds = ctx.data_sources.add_or_update_pandas(f"{table}-source")
    asset = ds.get_asset(table) if table in [a.name for a in ds.assets] else ds.add_dataframe_asset(table)
    bd_names = [b.name for b in asset.batch_definitions]
    bd = asset.get_batch_definition(tag) if tag in bd_names else asset.add_batch_definition_whole_dataframe(tag)
    suite = ctx.suites.add_or_update(_suite(rules, f"{table}-suite"))
    vd = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(data=bd, suite=suite, name=f"{table}-{tag}"))
    if not with_docs:
        return vd.run(batch_parameters={"dataframe": df}, result_format="SUMMARY")
    cp = ctx.checkpoints.add_or_update(gx.Checkpoint(
        name=f"{table}-{tag}-cp", validation_definitions=[vd],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")], result_format={"result_format": "SUMMARY"}))
    res = cp.run(batch_parameters={"dataframe": df})
    return next(iter(res.run_results.values()))


def _gx_key(expectation_type: str, column: str | None) -> tuple[str, str | None]:
    return expectation_type, column


def outcomes_from_gx(result, rules: list[Rule], rows: int, file: str | None) -> list[ExpectationOutcome]:
    """One outcome per rule, in the rules' order: GX does not keep the suite's order in its results,
    so each result is matched to its rule by expectation type and column."""
    by_key = {_gx_key(r.expectation_config.type, r.expectation_config.kwargs.get("column")): r for r in result.results}
    outs = []
    for rule in rules:
        r = by_key[_gx_key(GX_NAMES[rule.kind], None if rule.kind == "rows_at_least" else rule.column)]
        res = r.result or {}
        unexpected = int(res.get("unexpected_count") or 0)
        count = res.get("element_count", rows) if rule.kind != "rows_at_least" else rows
        outs.append(ExpectationOutcome(rule, element_count=int(count),
                                       unexpected_count=unexpected,
                                       sample=list(res.get("partial_unexpected_list") or [])[:5],
                                       file=file if unexpected or (rule.kind == "rows_at_least" and rows == 0) else None))
    return outs


def validate_frame(table: str, df: pd.DataFrame, rules: list[Rule], file: str | None) -> list[ExpectationOutcome]:
    """Run GX on one frame in this process (an ephemeral context, reused). The context's stores are not
    thread-safe (two pieces validated on two threads of one Dask worker corrupt its suite store), so
    one frame at a time per process."""
    with _GX_LOCK:
        res = run_gx(_ephemeral_context(), table, df, rules)
    outcomes = outcomes_from_gx(res, rules, len(df), file)
    for o in outcomes:
        if o.unexpected_count and o.rule.report_column and o.rule.report_column in df:
            # a derived check column (e.g. _user_known) holds flags: show the user's offending values
            o.sample = df.loc[o.rule.violations(df), o.rule.report_column].head(5).tolist()
    return outcomes


def merge_outcomes(parts: list[list[ExpectationOutcome]]) -> list[ExpectationOutcome]:
    merged = [ExpectationOutcome(o.rule) for o in parts[0]]
    for part in parts:
        for m, o in zip(merged, part):
            m.element_count += o.element_count
            m.unexpected_count += o.unexpected_count
            if o.unexpected_count and len(m.sample) < 5:
                m.sample.extend(o.sample[: 5 - len(m.sample)])
            m.file = m.file or o.file
    return merged


def apply_quarantine(result: TableResult, cfg: ValidationConfig) -> None:
    """In quarantine mode, row-level failures within the allowed fraction become drops, not errors."""
    if cfg.mode != "quarantine" or result.rows == 0:
        return
    failing = [o for o in result.outcomes if not o.success]
    if not failing or any(not o.rule.row_level for o in failing):
        return
    if sum(o.unexpected_count for o in failing) / result.rows > cfg.max_quarantine_fraction:
        return
    for o in failing:
        o.quarantined = True  # the exact row count comes from the masks applied in preprocessing


def raise_for(result: TableResult) -> None:
    for o in result.outcomes:
        if not o.success:
            file = o.file or (result.files[0] if result.files else None)
            column = None if o.rule.kind == "rows_at_least" else (o.rule.report_column or o.rule.column)
            raise DataContractError(file, column, o.rule.text, o.sample, o.unexpected_count or None)


def quarantine_mask(df: pd.DataFrame, rules: list[Rule]) -> pd.Series:
    bad = pd.Series(False, index=df.index)
    for r in rules:
        bad |= r.violations(df)
    return bad


# --------------------------------------------------------------------------- reports


def write_reports(results: list[TableResult], frames_for_docs: dict[str, list[tuple[str, pd.DataFrame]]],
                  out_dir: Path) -> dict[str, str]:
    """quality/<table>.json + summary.json, and Data Docs HTML built by GX for the given frames."""
    gx = _quiet_import()

    out_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        (out_dir / f"{r.table}.json").write_text(json.dumps(r.to_dict(), indent=2, default=str))
    summary = {"success": all(r.success for r in results), "tables": [
        {"table": r.table, "success": r.success, "rows": r.rows, "quarantined_rows": r.quarantined_rows,
         "failed": [o.rule.text for o in r.outcomes if not o.success]} for r in results]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    ctx = gx.get_context(mode="file", project_root_dir=str(out_dir))
    _quiet(ctx)
    by_table = {r.table: r for r in results}
    for table, frames in frames_for_docs.items():
        for tag, df in frames:
            run_gx(ctx, table, df, by_table[table].rules, with_docs=True, tag=tag)
    docs = out_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    return {"summary": str(out_dir / "summary.json"), "data_docs": str(docs) if docs.exists() else ""}
