"""Hot reload: the service follows registered-model aliases.

A `ModelFollower` polls the registry (every `serve.poll_s`, or at once on `wake()`: SIGHUP); when an
alias has moved (a promotion, a rollback, a forced promote) it loads the new version completely
(download, build the scorer, one warm-up answer) and only then swaps it in. A request reads the
current model once, at its start, so it is answered by one version from start to end, and no request
fails or waits during a swap. A failed load keeps the old version serving and is counted.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from tasks.bundle import Scorer

log = logging.getLogger("seqrec.serve")


@dataclass(frozen=True)
class Loaded:
    """One registered version, ready to answer."""

    alias: str
    version: int
    scorer: Scorer
    loaded_at: float
    load_seconds: float
    item_records: list[dict] = field(repr=False)  # per item index: the item's attributes (no nulls)


def item_records(scorer: Scorer) -> list[dict]:
    """Each item's attributes as a JSON-ready dict (nulls left out), by item index."""
    info = scorer.item_info
    if not len(info.columns):
        return [{} for _ in range(len(info))]
    out = []
    for row in info.astype(object).where(info.notna(), None).to_dict("records"):
        out.append({k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items() if v is not None})
    return out


def load_version(alias: str, version: int, fetch: Callable[[int, Path], Path], threads: int) -> Loaded:
    """Download `version`'s bundle, build its scorer and answer once (first-call costs are paid
    here, not by the first request after the swap)."""
    import torch

    torch.set_num_threads(threads)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seqrec-serve-") as tmp:
        scorer = Scorer(fetch(version, Path(tmp)))  # reads everything into memory: the directory can go
    users = scorer.hist_index[:1].tolist() or [None]
    scorer.recommend(pd.DataFrame({"user_id": users}), k=10)
    return Loaded(alias, int(version), scorer, time.time(), time.perf_counter() - t, item_records(scorer))


def settle_heap() -> None:
    """Collect once, then move every live object out of the cyclic collector's reach (gc.freeze).
    The service holds hundreds of thousands of long-lived objects (the libraries, the model's
    histories and item records); left to the collector, each full collection walks them all and
    stalls requests for ~150 ms (on ml-100k, p95 at 32 clients 182 ms without, 28 ms with).
    Unfreezing first lets the collection free the cycles of the version just replaced."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelFollower:
    """The loaded version of each followed alias, kept in step with the registry."""

    def __init__(self, aliases: list[str], resolve: Callable[[], dict[str, int]],
                 fetch: Callable[[int, Path], Path], poll_s: float, threads: int = 1,
                 on_change: Callable[[str, Loaded | None, str], None] | None = None) -> None:
        self.aliases = list(dict.fromkeys(aliases))
        self.resolve = resolve          # -> {alias: version} as the registry says now
        self.fetch = fetch              # (version, into dir) -> the version's bundle directory
        self.poll_s = poll_s
        self.threads = threads
        self.on_change = on_change or (lambda alias, loaded, result: None)
        self.current: dict[str, Loaded] = {}
        self.last_error: str | None = None
        self.last_check: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()

    def get(self, alias: str) -> Loaded | None:
        return self.current.get(alias)

    def check(self) -> list[str]:
        """Load what moved; returns the aliases that changed. Errors are recorded, not raised: the
        loaded versions keep serving."""
        changed: list[str] = []
        with self._check_lock:
            try:
                wanted = self.resolve()
            except Exception as e:  # registry unreachable: keep serving what is loaded
                self._failed("*", f"cannot read the registry aliases: {e}")
                return changed
            self.last_check = time.time()
            cache = {m.version: m for m in self.current.values()}
            for alias in self.aliases:
                version = wanted.get(alias)
                have = self.current.get(alias)
                if version is None:
                    if have is not None:  # alias deleted: stop answering with it
                        del self.current[alias]
                        changed.append(alias)
                        self.on_change(alias, None, "removed")
                    continue
                if have is not None and have.version == version:
                    continue
                try:
                    same = cache.get(version)
                    loaded = (Loaded(alias, same.version, same.scorer, time.time(), 0.0, same.item_records) if same
                              else load_version(alias, version, self.fetch, self.threads))
                except Exception as e:
                    self._failed(alias, f"loading version {version} for @{alias} failed: {e}")
                    continue
                self.current = {**self.current, alias: loaded}  # one assignment: readers see old or new
                cache[version] = loaded
                changed.append(alias)
                self.last_error = None
                log.info("@%s: now version %d (was %s; loaded in %.2fs)", alias, version,
                            have.version if have else "none", loaded.load_seconds)
                self.on_change(alias, loaded, "loaded")
                settle_heap()
        return changed

    def _failed(self, alias: str, message: str) -> None:
        self.last_error = message
        log.error(message)
        self.on_change(alias, None, "failed")

    def wake(self) -> None:
        """Check now (SIGHUP)."""
        self._wake.set()

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.check()
                self._wake.wait(self.poll_s)
                self._wake.clear()

        self._thread = threading.Thread(target=loop, name="seqrec-model-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def registry_follower(cfg, tracking, workdir: Path, on_change=None) -> ModelFollower:
    """A follower of `cfg.alias` (and the challenger when canary or shadow is on) in the registry
    the training flow writes."""
    from tasks.registry import open_registry
    from tasks.tracking import bundle_of

    reg = open_registry(tracking, workdir, require_shared=False)  # reads aliases only
    aliases = [cfg.alias]
    if cfg.canary_fraction > 0 or cfg.shadow:
        aliases.append(cfg.challenger_alias)
    return ModelFollower(aliases, reg.aliases, lambda v, dst: bundle_of(reg.client, reg.name, v, dst), cfg.poll_s,
                         cfg.threads, on_change)
