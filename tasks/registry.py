"""Champion bookkeeping: the `champion` alias, decision tags on versions, an append-only promotion
log, and a lock so that compare + promote of concurrent runs never act on a stale champion.

The log is the record of intent: every alias move is appended (and fsynced) *before* the alias is
moved, and `reconcile()` (run under the lock before any decision) finishes a move that a crash cut
short, so the alias and the log always agree after the next run.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from seqrec.errors import SeqrecError
from seqrec.fsutil import waiting_lock

CHAMPION, CHALLENGER = "champion", "challenger"
PROMOTING_ACTIONS = ("promote", "force")


class RegistryError(SeqrecError):
    """A registry command that cannot be carried out (unknown version, nothing to roll back to, ...)."""


@dataclass
class Registry:
    client: Any            # mlflow.MlflowClient
    name: str
    root: Path             # holds promotions.jsonl and registry.lock
    lock_timeout_s: float = 1800

    @property
    def log_path(self) -> Path:
        return self.root / "promotions.jsonl"

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def lock(self, log=print) -> Iterator[None]:
        from filelock import Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "registry.lock"
        try:
            with waiting_lock(path, log, f"waiting for the registry lock {path} (another run is comparing/promoting)",
                              self.lock_timeout_s):
                yield
        except Timeout:
            raise RegistryError(f"registry lock {path} still held after {self.lock_timeout_s:.0f}s; "
                                f"nothing was promoted") from None

    # ------------------------------------------------------------------ reads

    def aliases(self) -> dict[str, int]:
        from mlflow.exceptions import MlflowException

        try:
            rm = self.client.get_registered_model(self.name)
        except MlflowException:
            return {}
        return {k: int(v) for k, v in (rm.aliases or {}).items()}

    def champion(self) -> int | None:
        return self.aliases().get(CHAMPION)

    def versions(self) -> list:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{self.name}'")
        except MlflowException:
            return []
        return sorted(found, key=lambda v: int(v.version))

    def version(self, version: int):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException:
            raise RegistryError(f"model '{self.name}' has no version {version}") from None

    def entries(self) -> list[dict]:
        if not self.log_path.is_file():
            return []
        out = []
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                # a torn last line (crash mid-append) carries no completed intent
                if n != len(lines):
                    raise RegistryError(f"{self.log_path}: line {n} is not valid JSON") from None
        return out

    def champion_stack(self) -> list[int]:
        """Champions in order, replayed from the log: promote/force push, rollback pops."""
        stack: list[int] = []
        for e in self.entries():
            if e["action"] in PROMOTING_ACTIONS:
                stack.append(int(e["version"]))
            elif e["action"] == "rollback" and stack:
                stack.pop()
        return stack

    # ------------------------------------------------------------------ writes

    def _append(self, entry: dict) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": _user(), **entry}
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return entry

    def reconcile(self, log=print) -> int | None:
        """Make the alias agree with the log (a crash between append and alias move). Returns champion."""
        stack = self.champion_stack()
        want = stack[-1] if stack else None
        have = self.champion()
        if want is not None and have != want:
            log(f"registry: champion alias was {have}, the promotion log says {want}; restoring the log's state")
            self.client.set_registered_model_alias(self.name, CHAMPION, str(want))
        elif want is None and have is not None:
            # an alias set outside seqrec (e.g. in the MLflow UI): adopt it into the log
            self._append({"action": "force", "version": have, "previous": None,
                          "reason": "alias found without a log entry (set outside seqrec)"})
        return self.champion()

    def record_decision(self, version: int, decision: dict) -> None:
        tags = {"ab.decision": decision["decision"], "ab.baseline": str(decision["baseline"]),
                "ab.reasons": "; ".join(decision.get("reasons") or []) or "-"}
        for k in ("lift", "ci_low", "ci_high", "p_value", "challenger_mean", "reference_mean"):
            if decision.get(k) is not None:
                tags[f"ab.{k}"] = f"{decision[k]:.6g}"
        for k, v in tags.items():
            self.client.set_model_version_tag(self.name, str(version), k, v[:5000])

    def promote(self, version: int, action: str, run_id: str | None = None, decision: dict | None = None,
                reason: str = "") -> dict:
        """Move `champion` to `version` (log first, then the alias)."""
        self.version(version)
        entry = self._append({"action": action, "version": int(version), "previous": self.champion(),
                              "run_id": run_id, "reason": reason,
                              "decision": {k: decision.get(k) for k in ("decision", "baseline", "lift", "ci_low",
                                                                          "ci_high", "p_value")} if decision else None})
        self.client.set_registered_model_alias(self.name, CHAMPION, str(version))
        self.client.set_model_version_tag(self.name, str(version), "champion.since", entry["time"])
        if action == "force":
            self.client.set_model_version_tag(self.name, str(version), "promotion.forced", "true")
        return entry

    def promote_command(self, version: int, force: bool) -> dict:
        """`seqrec promote`: a version whose recorded A/B passed, or any version with --force."""
        with self.lock():
            self.reconcile()
            mv = self.version(version)
            if self.champion() == version:
                raise RegistryError(f"version {version} is already the champion")
            passed = (mv.tags or {}).get("ab.decision") == "pass"
            if not passed and not force:
                raise RegistryError(f"version {version} has A/B decision "
                                    f"'{(mv.tags or {}).get('ab.decision', 'none')}'; promote it with --force "
                                    f"(recorded as forced)")
            return self.promote(version, "promote" if passed and not force else "force",
                                reason="seqrec promote" + (" --force" if force else ""))

    def rollback(self) -> dict:
        """`champion` back to the previous champion in the log."""
        with self.lock():
            self.reconcile()
            stack = self.champion_stack()
            if len(stack) < 2:
                raise RegistryError("no previous champion to roll back to"
                                    + (f" (version {stack[0]} is the first)" if stack else " (no champion yet)"))
            target = stack[-2]
            self.version(target)
            entry = self._append({"action": "rollback", "version": target, "previous": stack[-1],
                                  "reason": "seqrec rollback"})
            self.client.set_registered_model_alias(self.name, CHAMPION, str(target))
            self.client.set_model_version_tag(self.name, str(target), "champion.since", entry["time"])
            return entry


def open_registry(tcfg, workdir: Path) -> Registry:
    from tasks.tracking import client_for, registry_dir

    return Registry(client_for(tcfg, workdir), tcfg.model_name, registry_dir(tcfg, workdir), tcfg.lock_timeout_s)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"
