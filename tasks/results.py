"""Persisted results of the cached stages (preprocess, features) as typed JSON, never pickles.

Prefect's default result serializer pickles, and a result file names its own serializer: a file
planted in the result storage would be unpickled (code run) by the next cache lookup. The cached
stages write typed JSON instead (`TypedJSONSerializer`), and their storage (`CheckedResultStorage`)
hands Prefect only files that are exactly that; anything else is a cache miss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import LocalFileSystem
from prefect.logging import get_logger
from prefect.serializers import Serializer
from pydantic import Field, TypeAdapter

from seqrec.errors import SeqrecError
from seqrec.fsutil import stable_hash
from tasks import preprocess as pre

RESULT_TYPES: dict[str, type] = {"PreprocessResult": pre.PreprocessResult, "str": str}
RECORD_KEYS = {"metadata", "result"}
METADATA_KEYS = {"storage_key", "expiration", "serializer", "prefect_version", "storage_block_id"}


class ResultFileError(SeqrecError):
    """A persisted result that is not typed JSON of a known result type (tampered or foreign)."""


class TypedJSONSerializer(Serializer):
    """JSON of one of RESULT_TYPES, tagged with its short name. Reading validates against that type
    only: no class path is taken from the file, nothing is imported or unpickled."""

    type: str = Field(default="seqrec-typed-json", frozen=True)

    def dumps(self, obj: Any) -> bytes:
        name = next((n for n, cls in RESULT_TYPES.items() if type(obj) is cls), None)
        if name is None:
            raise TypeError(f"{type(obj).__name__} is not a cached result type ({', '.join(RESULT_TYPES)})")
        return json.dumps({"type": name, "value": TypeAdapter(RESULT_TYPES[name]).dump_python(obj, mode="json")}).encode()

    def loads(self, blob: bytes) -> Any:
        doc = _strict_json(blob)
        name = doc.get("type") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or set(doc) != {"type", "value"} or not isinstance(name, str) \
                or name not in RESULT_TYPES:
            raise ResultFileError(f"not a typed result (type {name!r}; known: {', '.join(RESULT_TYPES)})")
        return TypeAdapter(RESULT_TYPES[name]).validate_python(doc["value"])


def _strict_json(blob: bytes | str) -> Any:
    """JSON with duplicate keys refused: another parser (Prefect's) could pick the other value."""
    def pairs(kv: list) -> dict:
        keys = [k for k, _ in kv]
        if len(set(keys)) != len(keys):
            raise ResultFileError(f"duplicate keys in {sorted(keys)}")
        return dict(kv)

    try:
        return json.loads(blob, object_pairs_hook=pairs)
    except ValueError as e:  # includes JSONDecodeError and bad UTF-8
        raise ResultFileError(f"not JSON ({e})") from None


def checked_record(content: bytes) -> bytes:
    """A persisted result record, re-written from what was checked: our serializer named exactly,
    no legacy top-level keys (Prefect would let them override the serializer), a readable typed
    value. Anything else raises ResultFileError."""
    rec = _strict_json(content)
    if not isinstance(rec, dict) or set(rec) != RECORD_KEYS:
        raise ResultFileError(f"record keys {sorted(rec) if isinstance(rec, dict) else type(rec).__name__}, "
                              f"expected {sorted(RECORD_KEYS)}")
    meta, result = rec["metadata"], rec["result"]
    if not isinstance(meta, dict) or not set(meta) <= METADATA_KEYS:
        raise ResultFileError("unexpected result metadata")
    if meta.get("serializer") != TypedJSONSerializer().model_dump():
        raise ResultFileError(f"serializer {meta.get('serializer')!r} is not {TypedJSONSerializer().type!r}")
    if not isinstance(result, str):
        raise ResultFileError("result is not a JSON string")
    TypedJSONSerializer().loads(result.encode())
    return json.dumps({"metadata": meta, "result": result}).encode()


class CheckedResultStorage(LocalFileSystem):
    """The cached stages' result files (<workdir>/prefect-results): a file that is not typed JSON of a
    known result type is refused before Prefect parses it, which Prefect takes as a cache miss (the
    stage is recomputed and the file rewritten)."""

    _block_type_name = "Seqrec Result Storage"

    async def aread_path(self, path: str) -> bytes:
        return _checked(await super().aread_path(path), path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return _checked(super().read_path(path, _sync=True), path)


def _checked(content: bytes, path: str) -> bytes:
    try:
        return checked_record(content)
    except ResultFileError as e:
        get_logger("seqrec.results").warning("refusing persisted result %s (recomputed instead): %s", path, e)
        raise ResultFileError(f"persisted result {path} refused: {e}") from None


def result_storage(workdir: Path) -> CheckedResultStorage:
    """The saved result-storage block of a work directory (Prefect requires a saved block)."""
    storage = CheckedResultStorage(basepath=str(Path(workdir) / "prefect-results"))
    storage.save(f"seqrec-results-{stable_hash(str(workdir), n=12)}", overwrite=True)
    return storage
