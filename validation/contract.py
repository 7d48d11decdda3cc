"""The data contract: column mapping and typing with errors that name the file,
the column and the rule. No torch, no Prefect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from seqrec.errors import DataContractError

REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
OPTIONAL_EVENT_COLUMNS = ("event_type", "value", "session_id")


def read_table_file(path: str, columns: list[str] | None = None, row_group: int | None = None) -> pd.DataFrame:
    """Read one parquet/CSV file (or one parquet row group); malformed files name themselves."""
    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            f = pq.ParquetFile(p)
            cols = [c for c in columns if c in f.schema_arrow.names] if columns else None
            table = f.read_row_group(row_group, columns=cols) if row_group is not None else f.read(columns=cols)
            return table.to_pandas()
        sep = "\t" if suffix == ".tsv" else ","
        return pd.read_csv(p, sep=sep, dtype=str, keep_default_na=True, encoding="utf-8", on_bad_lines="error")
    except UnicodeDecodeError as e:
        raise DataContractError(str(p), None, f"file must be UTF-8 encoded ({e.reason} at byte {e.start})") from None
    except pd.errors.EmptyDataError:
        return pd.DataFrame({c: pd.Series(dtype=str) for c in (columns or [])})
    except (pd.errors.ParserError, ValueError, OSError) as e:
        kind = "parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise DataContractError(str(p), None, f"file must be well-formed {kind} ({str(e).strip()[:200]})") from None


def event_pieces(files: list[str]) -> list[tuple[str, int | None]]:
    """Units of parallel work: one per parquet row group, one per CSV file."""
    pieces: list[tuple[str, int | None]] = []
    for f in files:
        if Path(f).suffix.lower() in (".parquet", ".pq"):
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
    """Rename the user's columns to the contract's names; keep other columns as they are."""
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
    out = df.rename(columns=rename)
    return out.loc[:, ~out.columns.duplicated()]


def read_events_piece(file: str, row_group: int | None, columns: dict[str, str | None]) -> pd.DataFrame:
    """One piece of the events: read, map to the contract's column names, type."""
    raw = read_table_file(file, row_group=row_group)
    return type_events(map_columns(raw, columns, file, REQUIRED_EVENT_COLUMNS, OPTIONAL_EVENT_COLUMNS), file)


def _as_id(s: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(s):  # ids read as floats (e.g. 12.0) must stay "12"
        whole = s.dropna()
        if (whole == np.floor(whole)).all():
            return s.astype("Int64").astype("string")
    return s.astype("string").str.strip().replace("", pd.NA)


def _numeric(s: pd.Series, file: str, column: str, rule: str) -> pd.Series:
    out = pd.to_numeric(s, errors="coerce")
    bad = out.isna() & s.notna() & (s.astype("string").str.strip() != "")
    if bad.any():
        raise DataContractError(file, column, rule, s[bad].head(5).tolist(), int(bad.sum()))
    return out


def type_events(df: pd.DataFrame, file: str) -> pd.DataFrame:
    """Cast mapped events to contract types. Unparsable values are errors, nulls are left for GX."""
    out = pd.DataFrame(index=df.index)
    out["user_id"] = _as_id(df["user_id"])
    out["item_id"] = _as_id(df["item_id"])
    ts = df["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(ts):
        ts = ts.dt.tz_localize(None) if getattr(ts.dt, "tz", None) is not None else ts
        out["timestamp"] = (ts.astype("int64") // 10**9).where(ts.notna())
    else:
        num = _numeric(ts, file, "timestamp", "timestamp must be an integer unix time in seconds")
        frac = num.notna() & (num != np.floor(num))
        if frac.any():
            raise DataContractError(file, "timestamp", "timestamp must be whole unix seconds",
                                    num[frac].head(5).tolist(), int(frac.sum()))
        out["timestamp"] = num
    out["timestamp"] = out["timestamp"].astype("Int64")
    if "event_type" in df.columns:
        out["event_type"] = df["event_type"].astype("string").str.strip().str.lower()
    if "value" in df.columns:
        out["value"] = _numeric(df["value"], file, "value", "value must be numeric").astype("float64")
    if "session_id" in df.columns:
        out["session_id"] = df["session_id"].astype("string")
    return out


def type_entities(df: pd.DataFrame, key: str, file: str, categorical: list[str], numeric: list[str],
                  text: list[str], multi: list[str]) -> pd.DataFrame:
    """Users/items tables: key as string id, declared columns typed; undeclared columns dropped."""
    if key not in df.columns:
        raise DataContractError(file, key, f"required column '{key}' is missing; found columns {list(df.columns)[:12]}")
    out = pd.DataFrame({key: _as_id(df[key])})
    for col in (*categorical, *numeric, *text, *multi):
        if col not in df.columns:
            raise DataContractError(file, col, "column declared in data.schema is missing")
    for col in categorical:
        out[col] = df[col].astype("string")
    for col in numeric:
        out[col] = _numeric(df[col], file, col, f"numeric attribute '{col}' must be numeric").astype("float64")
    for col in (*text, *multi):
        out[col] = df[col].astype("string").fillna("")
    return out
