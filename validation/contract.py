"""The data contract: file formats, column mapping and typing, with errors that name the file, the
column and the rule. No torch, no Prefect.

What is accepted as it is (legitimate but unusual input): parquet, CSV, TSV and JSON Lines, CSV/TSV/JSON
Lines compressed with gzip or zstd; timestamps as unix integers in the unit `data.timestamp_unit`
says, as datetimes of any resolution (timezone-aware ones converted to UTC, naive ones read as UTC)
and as ISO-8601 text; ids Unicode-normalised (NFC) and stripped; a null event type given the declared
default type (`data.null_event_type`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from seqrec.encoding import normalise_label
from seqrec.errors import DataContractError

REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
OPTIONAL_EVENT_COLUMNS = ("event_type", "value", "session_id")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
           ".ndjson": "jsonl"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
SUPPORTED = ".parquet, .csv, .tsv, .jsonl (CSV/TSV/JSON Lines also as .gz or .zst)"
TimestampUnit = Literal["s", "ms", "us", "ns"]
PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


@dataclass(frozen=True)
class EventFormat:
    """How the events files are read: the column map and the declared reading rules."""

    columns: dict[str, str | None] = field(default_factory=dict)
    timestamp_unit: TimestampUnit = "s"
    null_event_type: str | None = "event"


def file_format(path: str | Path) -> tuple[str, str | None] | None:
    """(format, compression) from the file name, or None for a file that is not a data file."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes.pop()
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (fmt == "parquet" and compression):  # parquet compresses inside the file
        return None
    return fmt, compression


def read_table_file(path: str, columns: list[str] | None = None, row_group: int | None = None) -> pd.DataFrame:
    """Read one data file (or one parquet row group); malformed files name themselves."""
    p = Path(path)
    kind = file_format(p)
    if kind is None:
        raise DataContractError(str(p), None, f"unsupported file type (use {SUPPORTED})")
    fmt, compression = kind
    try:
        if fmt == "parquet":
            f = pq.ParquetFile(p)
            cols = [c for c in columns if c in f.schema_arrow.names] if columns else None
            table = f.read_row_group(row_group, columns=cols) if row_group is not None else f.read(columns=cols)
            return table.to_pandas()
        if fmt == "jsonl":
            # dates stay as written: the contract converts timestamps itself, exactly
            return pd.read_json(p, lines=True, dtype=False, convert_dates=False, keep_default_dates=False,
                                compression=compression, encoding="utf-8")
        return pd.read_csv(p, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=True, encoding="utf-8",
                           on_bad_lines="error", compression=compression)
    except UnicodeDecodeError as e:
        raise DataContractError(str(p), None, f"file must be UTF-8 encoded ({e.reason} at byte {e.start})") from None
    except pd.errors.EmptyDataError:
        return pd.DataFrame({c: pd.Series(dtype=str) for c in (columns or [])})
    except Exception as e:  # noqa: BLE001 - any unreadable file (parser, codec, I/O) is a contract violation
        what = {"parquet": "parquet", "jsonl": "JSON Lines", "csv": "CSV", "tsv": "TSV"}[fmt]
        what += f" ({compression}-compressed)" if compression else ""
        raise DataContractError(str(p), None, f"file must be well-formed {what} ({str(e).strip()[:200]})") from None


def read_tables(files: list[str]) -> pd.DataFrame:
    """Several files of one table (a directory or a glob), concatenated in file order."""
    frames = [read_table_file(f) for f in files]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def event_pieces(files: list[str]) -> list[tuple[str, int | None]]:
    """Units of parallel work: one per parquet row group, one per other file."""
    pieces: list[tuple[str, int | None]] = []
    for f in files:
        kind = file_format(f)
        if kind is not None and kind[0] == "parquet":
            try:
                n = pq.ParquetFile(f).num_row_groups
            except Exception as e:  # noqa: BLE001 - any unreadable parquet is a contract violation
                raise DataContractError(f, None, f"file must be well-formed parquet ({str(e)[:200]})") from None
            pieces.extend((f, i) for i in range(max(n, 1)))
        else:
            pieces.append((f, None))
    return pieces


def map_columns(df: pd.DataFrame, mapping: dict[str, str | None], file: str, required: tuple[str, ...],
                optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rename the user's columns to the contract's names; keep other columns as they are. An explicit
    mapping wins over a column that already has the contract's name (that column is set aside)."""
    rename: dict[str, str] = {}
    for name in (*required, *optional):
        src = mapping.get(name)
        explicit = src is not None
        src = src or name
        if src in df.columns:
            rename[src] = name
        elif name in required or explicit:
            raise DataContractError(file, src, f"required column '{src}' (contract column '{name}') is missing; "
                                    f"found columns {list(df.columns)[:12]}")
    shadowed = [name for src, name in rename.items() if src != name and name in df.columns and name not in rename]
    return df.drop(columns=shadowed).rename(columns=rename)


def read_events_piece(file: str, row_group: int | None, fmt: EventFormat) -> pd.DataFrame:
    """One piece of the events: read, map to the contract's column names, type."""
    raw = read_table_file(file, row_group=row_group)
    return type_events(map_columns(raw, fmt.columns, file, REQUIRED_EVENT_COLUMNS, OPTIONAL_EVENT_COLUMNS), file, fmt)


def _as_id(s: pd.Series) -> pd.Series:
    """Ids as text: whole floats (12.0, from a CSV column with nulls) as "12", Unicode NFC, stripped."""
    if pd.api.types.is_float_dtype(s):
        whole = s.dropna()
        if (whole == np.floor(whole)).all():
            return s.astype("Int64").astype("string")
    return clean_text(s)


def clean_text(s: pd.Series) -> pd.Series:
    """Text as the contract compares it: Unicode NFC, surrounding whitespace removed, blank is null.
    Arrow's kernels do it in C (six times faster than pandas' per-value normalisation at 10M rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(s.astype("string"), type=pa.large_string())
    arr = pc.utf8_trim_whitespace(pc.utf8_normalize(arr, form="NFC"))
    arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.large_string()), arr)
    out = arr.to_pandas(types_mapper=lambda _: pd.StringDtype())
    out.index = s.index
    return out


def labels(s: pd.Series) -> pd.Series:
    """Event types normalised by `seqrec.encoding.normalise_label`, the function config lists go
    through (applied once per distinct value); blank is null."""
    cat = s.astype("string").astype("category")
    return cat.map({c: normalise_label(c) for c in cat.cat.categories}).astype("string").replace("", pd.NA)


def _numeric(s: pd.Series, file: str, column: str, rule: str) -> pd.Series:
    out = pd.to_numeric(s, errors="coerce", dtype_backend="numpy_nullable")
    bad = out.isna() & s.notna() & (s.astype("string").str.strip() != "")
    if bad.any():
        raise DataContractError(file, column, rule, s[bad].head(5).tolist(), int(bad.sum()))
    return out


def _datetime_seconds(ts: pd.Series) -> pd.Series:
    """Datetimes of any resolution -> whole UTC seconds (floored), exactly: integer arithmetic on the
    stored unit, never through float or a nanosecond cast that overflows after 2262."""
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    values = ts.to_numpy()
    unit = np.datetime_data(values.dtype)[0]
    per_unit = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}.get(unit)
    if per_unit is None:  # days or coarser: convert to seconds first (exact)
        values, per_unit = values.astype("datetime64[s]"), 1
    secs = np.floor_divide(values.view("int64"), per_unit)
    return pd.Series(secs, index=ts.index, dtype="Int64").mask(pd.isna(values))


def _timestamps(ts: pd.Series, file: str, unit: TimestampUnit) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(ts):
        return _datetime_seconds(ts)
    if not pd.api.types.is_numeric_dtype(ts):
        text = ts.astype("string").str.strip().replace("", pd.NA)
        numeric = pd.to_numeric(text, errors="coerce")
        if text.notna().any() and numeric[text.notna()].isna().all():  # ISO-8601 date-times, not numbers
            parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
            bad = parsed.isna() & text.notna()
            if bad.any():
                raise DataContractError(file, "timestamp", "timestamp must be an ISO-8601 date-time or an integer "
                                        "unix time", text[bad].head(5).tolist(), int(bad.sum()))
            return _datetime_seconds(parsed)
    rule = f"timestamp must be an integer unix time in {'seconds' if unit == 's' else unit} (data.timestamp_unit)"
    num = _numeric(ts, file, "timestamp", rule)
    frac = num.notna() & (num != np.floor(num.astype("float64")))
    if frac.any():
        raise DataContractError(file, "timestamp", f"timestamp must be whole unix {'seconds' if unit == 's' else unit}",
                                num[frac].head(5).tolist(), int(frac.sum()))
    num = num.astype("Int64")
    return num if unit == "s" else num // PER_SECOND[unit]


def type_events(df: pd.DataFrame, file: str, fmt: EventFormat = EventFormat()) -> pd.DataFrame:  # noqa: B008
    """Cast mapped events to contract types. Unparsable values are errors, nulls are left for GX
    (a null event type becomes `fmt.null_event_type` when one is declared)."""
    out = pd.DataFrame(index=df.index)
    out["user_id"] = _as_id(df["user_id"])
    out["item_id"] = _as_id(df["item_id"])
    out["timestamp"] = _timestamps(df["timestamp"], file, fmt.timestamp_unit).astype("Int64")
    if "event_type" in df.columns:
        et = labels(df["event_type"])
        out["event_type"] = et.fillna(fmt.null_event_type) if fmt.null_event_type else et
    if "value" in df.columns:
        out["value"] = _numeric(df["value"], file, "value", "value must be numeric").astype("float64")
    if "session_id" in df.columns:
        out["session_id"] = df["session_id"].astype("string")
    return out


def type_entities(df: pd.DataFrame, key: str, file: str, categorical: list[str], numeric: list[str],
                  text: list[str], multi: list[str]) -> pd.DataFrame:
    """Users/items tables: key as string id, declared columns typed; undeclared columns dropped. A null
    categorical attribute is the attribute's own "missing" category (code 0 in the views); null text or
    multi-valued attributes are empty."""
    if key not in df.columns:
        raise DataContractError(file, key, f"required column '{key}' is missing; found columns {list(df.columns)[:12]}")
    out = pd.DataFrame({key: _as_id(df[key])})
    for col in (*categorical, *numeric, *text, *multi):
        if col not in df.columns:
            raise DataContractError(file, col, "column declared in data.schema is missing")
    for col in categorical:
        out[col] = clean_text(df[col])
    for col in numeric:
        out[col] = _numeric(df[col], file, col, f"numeric attribute '{col}' must be numeric").astype("float64")
    for col in (*text, *multi):
        out[col] = df[col].astype("string").fillna("")
    return out
