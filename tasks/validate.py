"""Data-quality gate stages: raw tables before preprocessing, sequences after it.

A failure writes the GX report (JSON + Data Docs) under <workdir>/reports/<run>/quality and raises
a DataContractError naming file, column, rule and offending values; nothing else is written.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from seqrec.catalog import DataVersion
from seqrec.errors import DataContractError
from seqrec.fsutil import commit_dir
from tasks.preprocess import PreprocessResult
from tasks.sources import ResolvedInputs
from validation.config import ValidationConfig
from seqrec.splits import Cutoffs
from validation.contract import EventFormat, event_pieces, read_events_piece
from validation.suites import (Rule, TableResult, apply_quarantine, entity_rules, event_rules, merge_outcomes,
                               merge_sequence_checks, raise_for, sequence_checks, sequence_rules, validate_frame, write_reports)


def _event_frame(file: str, rg: int | None, fmt: EventFormat, known_items, known_users) -> pd.DataFrame:
    df = read_events_piece(file, rg, fmt)
    if known_items is not None:
        df["_item_known"] = df["item_id"].isin(known_items) | df["item_id"].isna()
    if known_users is not None:
        df["_user_known"] = df["user_id"].isin(known_users) | df["user_id"].isna()
    return df


def _validate_piece(file: str, rg: int | None, fmt: EventFormat, rules: list[Rule], known_items, known_users):
    df = _event_frame(file, rg, fmt, known_items, known_users)
    return validate_frame("events", df, rules, file), len(df)


def validate_raw(inputs: ResolvedInputs, vcfg: ValidationConfig, client, report_dir: Path,
                 now: int | None = None) -> list[TableResult]:
    """Validate users, items and events (events per piece on Dask, merged); raise on failure."""
    results: list[TableResult] = []
    docs: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    known: dict[str, np.ndarray | None] = {"users": None, "items": None}
    for which, key in (("users", "user_id"), ("items", "item_id")):
        df, path = inputs.entity_table(which)
        if df is None:
            continue
        numeric = inputs.schema_.user_numeric if which == "users" else inputs.schema_.item_numeric
        rules = entity_rules(key, which, numeric, vcfg)
        t = time.perf_counter()
        res = TableResult(which, rules, validate_frame(which, df, rules, path), rows=len(df), files=[path])
        res.seconds = time.perf_counter() - t
        results.append(res)
        docs[which] = [("all", df)]
        known[which] = df[key].dropna().unique()
    pieces = event_pieces(inputs.events)
    fmt = inputs.event_format()
    head = _event_frame(*pieces[0], fmt, known["items"], known["users"])
    rules = event_rules(vcfg, list(head.columns), now=now, check_items=known["items"] is not None,
                        check_users=known["users"] is not None, null_event_type=fmt.null_event_type,
                        timestamp_unit=fmt.timestamp_unit)
    t = time.perf_counter()
    if len(pieces) == 1:
        parts = [(validate_frame("events", head, rules, pieces[0][0]), len(head))]
    else:
        ki, ku = client.scatter([known["items"], known["users"]], broadcast=True, hash=False)
        parts = client.gather([client.submit(_validate_piece, f, rg, fmt, rules, ki, ku, pure=False)
                               for f, rg in pieces])
    ev = TableResult("events", rules, merge_outcomes([p[0] for p in parts]), rows=sum(p[1] for p in parts),
                     files=inputs.events)
    ev.seconds = time.perf_counter() - t
    apply_quarantine(ev, vcfg)
    results.append(ev)
    failing = [i for i, p in enumerate(parts) if any(not o.success for o in p[0])]
    doc_pieces = sorted(set(range(min(len(pieces), vcfg.docs_max_pieces))) | set(failing[:4]))
    docs["events"] = [(f"piece-{i}", head if i == 0 else _event_frame(*pieces[i], fmt, known["items"],
                                                                       known["users"])) for i in doc_pieces]
    write_reports(results, docs, report_dir / "quality")
    for r in results:
        if not r.success:
            raise_for(r)
    return results


def _part_checks(path: str, cuts: Cutoffs | None = None) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return sequence_checks(pq.read_table(path), cuts)


def validate_processed(pre: PreprocessResult, vcfg: ValidationConfig, raw_results: list[TableResult],
                       report_dir: Path, client=None) -> TableResult:
    """Check processed invariants on the staged version, then move it into place atomically."""
    if pre.reused:
        return TableResult("sequences", [], [], rows=pre.counts.get("users", 0))
    staging = Path(pre.staging_path)
    try:
        dv = DataVersion(staging)
        # per part (one per user bucket) in parallel; only per-user scalars are merged, never the events
        parts = sorted(str(p) for p in dv.sequences_path.glob("part-*.parquet"))
        split = dv.split
        cuts = (Cutoffs(split["valid_cutoff"], split["test_cutoff"], split.get("next_events", 1))
                if split["protocol"] == "temporal" else None)
        checks = merge_sequence_checks(client.gather(client.map(_part_checks, parts, cuts=cuts, pure=False)) if client
                                       else [_part_checks(p, cuts) for p in parts])
        rules = sequence_rules(dv.counts["items"], len(dv.event_types) - 1, vcfg.min_eval_users)
        t = time.perf_counter()
        res = TableResult("sequences", rules, validate_frame("sequences", checks, rules,
                                                             str(dv.sequences_path)),
                          rows=len(checks), files=[str(DataVersion(pre.path).sequences_path)])
        res.seconds = time.perf_counter() - t
        for r in raw_results:
            if r.quarantine_rules:
                r.quarantined_rows = pre.drops.get("quarantined", 0)
        write_reports([*raw_results, res], {"sequences": [("all", checks)]}, report_dir / "quality")
        if not res.success:
            raise_for(res)
        shutil.copytree(report_dir / "quality", dv.quality_dir)
        commit_dir(staging, Path(pre.path))
        return res
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = ["validate_raw", "validate_processed", "DataContractError"]
