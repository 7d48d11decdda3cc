"""Champion bookkeeping: the `champion` alias, decision tags on versions, an append-only promotion
log, and a lock so that compare + promote of concurrent runs never act on a stale champion.

The log is the record of intent: every alias move is appended (and fsynced) *before* the alias is
moved, and `reconcile()` (run under the lock before any decision) finishes a move that a crash cut
short, so the alias and the log always agree after the next run. A log whose champion no longer
exists in MLflow (deleted there) stops every compare, promote and registration with the commands
that repair it. The log directory records which tracking store it belongs to (`tracking_store.json`).

A first run whose network loses the A/B against the baseline registers and promotes the baseline
itself (`baseline_champion`), so there is always a servable champion.
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

from seqrec.errors import ConfigError, SeqrecError
from seqrec.fsutil import waiting_lock, write_json_atomic

CHAMPION, CHALLENGER = "champion", "challenger"
PROMOTING_ACTIONS = ("promote", "force")
STORE_MARKER = "tracking_store.json"


class RegistryError(SeqrecError):
    """A registry command that cannot be carried out (unknown version, nothing to roll back to, ...)."""


@dataclass
class Registry:
    client: Any            # mlflow.MlflowClient
    name: str
    root: Path             # holds promotions.jsonl, registry.lock and tracking_store.json
    lock_timeout_s: float = 1800
    store: str | None = None        # tracking.store_key of the store this log belongs to (None: unchecked)
    store_label: str | None = None  # the same, as a redacted URI for messages

    @property
    def log_path(self) -> Path:
        return self.root / "promotions.jsonl"

    @property
    def lock_path(self) -> Path:
        return self.root / "registry.lock"

    @property
    def marker_path(self) -> Path:
        return self.root / STORE_MARKER

    def check_store(self, create: bool = False) -> None:
        """Refuse a log directory that belongs to another tracking store; `create` records ours."""
        if self.store is None:
            return
        path = self.marker_path
        if path.is_file():
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ConfigError(f"{path}: unreadable ({e}); it records which tracking store the promotion log "
                                  f"in {self.root} belongs to") from None
            if rec.get("tracking_store") != self.store:
                raise ConfigError(
                    f"registry directory {self.root} (tracking.registry_dir) holds the promotion log and lock of "
                    f"tracking store {rec.get('tracking_uri') or rec.get('tracking_store')}, not of "
                    f"{self.store_label or self.store}: its champion is another store's. Point "
                    f"tracking.registry_dir at this store's shared registry directory (if the store itself moved, "
                    f"edit {path})")
        elif create:
            write_json_atomic(path, {"tracking_store": self.store, "tracking_uri": self.store_label or self.store,
                                     "model_name": self.name})

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def lock(self, log=print) -> Iterator[None]:
        from filelock import Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.lock_path
        try:
            with waiting_lock(path, log, f"waiting for the registry lock {path} (another run is comparing/promoting)",
                              self.lock_timeout_s):
                self.check_store(create=True)
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

    def exists(self, version: int) -> bool:
        """Whether MLflow still has `version` (False only when the store says it does not exist)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(self.name, str(version))
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def check_champion(self) -> int | None:
        """The log's champion; a RegistryError naming the repair when MLflow no longer has it.

        Run before anything is registered: a run that registers, compares and then cannot promote
        (the champion to compare with is gone) only piles up versions."""
        stack = self.champion_stack()
        if stack and not self.exists(stack[-1]):
            raise RegistryError(self._missing_champion(stack))
        return stack[-1] if stack else None

    def _missing_champion(self, stack: list[int]) -> str:
        gone = stack[-1]
        fixes = []
        if len(stack) >= 2 and self.exists(stack[-2]):
            fixes.append(f"`seqrec rollback` (back to version {stack[-2]}, the previous champion)")
        existing = [int(v.version) for v in self.versions()]
        if existing:
            fixes.append(f"`seqrec promote --version M --force` for an existing version M (latest: "
                         f"`seqrec promote --version {existing[-1]} --force`)")
        else:
            fixes.append(f"no version of '{self.name}' exists any more: move {self.log_path} aside to start over "
                         f"(the next run is then compared with the baseline)")
        return (f"champion version {gone} of model '{self.name}' no longer exists in MLflow (deleted there?), but "
                f"the promotion log {self.log_path} says it is the champion; nothing is registered, compared or "
                f"promoted until that is repaired: " + ", or ".join(fixes))

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

    def _drop_torn_tail(self) -> None:
        """Truncate a last line that a crash cut short (not JSON): appending after it would glue the
        new entry to the garbage, and `entries` would skip both. A complete entry that only lacks
        its newline gets one (entries() counts it, so the alias may already follow it)."""
        try:
            f = open(self.log_path, "r+b")
        except FileNotFoundError:
            return
        with f:
            data = f.read()
            if not data:
                return
            body = data[:-1] if data.endswith(b"\n") else data
            start = body.rfind(b"\n") + 1
            last = data[start:]
            if not last.strip():
                return
            try:
                json.loads(last)
            except ValueError:  # torn: no completed intent (entries() skips it too)
                f.truncate(start)
            else:
                if last.endswith(b"\n"):
                    return
                # complete JSON whose newline was not written: entries() already counts it, so keep it
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())

    def _append(self, entry: dict) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        self.check_store(create=True)
        self._drop_torn_tail()
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": _user(), **entry}
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return entry

    def reconcile(self, log=print, allow_missing: bool = False) -> int | None:
        """Make the alias agree with the log (a crash between append and alias move). Returns champion.

        A log champion that MLflow no longer has is a RegistryError naming the repair; the repairs
        themselves (`rollback`, `promote --force`) pass `allow_missing`."""
        stack = self.champion_stack()
        want = stack[-1] if stack else None
        if want is not None and not self.exists(want):
            msg = self._missing_champion(stack)
            if not allow_missing:
                raise RegistryError(msg)
            log(f"registry: {msg}")
            return self.champion()
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
        ref = decision.get("reference_version")
        tags = {"ab.decision": decision["decision"], "ab.baseline": str(decision["baseline"]),
                # the champion it was compared with ("none": the baseline, there was no champion);
                # `seqrec promote` honours a pass only while that is still the champion
                "ab.reference_version": str(int(ref)) if ref is not None else "none",
                "ab.reasons": "; ".join(decision.get("reasons") or []) or "-"}
        for k in ("lift", "ci_low", "ci_high", "p_value", "challenger_mean", "reference_mean"):
            if decision.get(k) is not None:
                tags[f"ab.{k}"] = f"{decision[k]:.6g}"
        for k, v in tags.items():
            self.client.set_model_version_tag(self.name, str(version), k, v[:5000])

    def promote(self, version: int, action: str, run_id: str | None = None, decision: dict | None = None,
                reason: str = "", extra: dict | None = None) -> dict:
        """Move `champion` to `version` (log first, then the alias); `extra`: more fields of the log entry.

        Once the alias moved the promotion is complete (log and alias agree): the bookkeeping tags
        after it cannot undo it, so their failures come back as `warnings` in the returned entry
        instead of an exception (a run must not fail with its promotion done)."""
        self.version(version)
        entry = self._append({"action": action, "version": int(version), "previous": self.champion(),
                              "run_id": run_id, "reason": reason, **(extra or {}),
                              "decision": {k: decision.get(k) for k in ("decision", "baseline", "reference_version",
                                                                          "lift", "ci_low", "ci_high", "p_value")}
                              if decision else None})
        self.client.set_registered_model_alias(self.name, CHAMPION, str(version))
        tags = {"champion.since": entry["time"], **({"promotion.forced": "true"} if action == "force" else {})}
        return {**entry, "alias_moved": True, "warnings": self._tag_after_move(version, tags)}

    def _tag_after_move(self, version: int, tags: dict[str, str]) -> list[str]:
        warnings = []
        for k, v in tags.items():
            try:
                self.client.set_model_version_tag(self.name, str(version), k, v)
            except Exception as e:  # noqa: BLE001 - the move is done; a missing tag is not worth failing it
                first = (str(e).splitlines() or [""])[0][:300]
                warnings.append(f"champion moved to version {version} (log and alias agree), but tag {k}={v} "
                                f"could not be set: {type(e).__name__}: {first}")
        return warnings

    def promote_command(self, version: int, force: bool) -> dict:
        """`seqrec promote`: a version whose recorded A/B passed against the current champion, or
        any version with --force. A pass against an earlier champion (or against the baseline when
        there was none) says nothing about the champion of today."""
        with self.lock():
            self.reconcile(allow_missing=force)
            mv = self.version(version)
            current = self.champion()
            if current == version:
                raise RegistryError(f"version {version} is already the champion")
            tags = mv.tags or {}
            passed = tags.get("ab.decision") == "pass"
            if not passed and not force:
                raise RegistryError(f"version {version} has A/B decision "
                                    f"'{tags.get('ab.decision', 'none')}'; promote it with --force "
                                    f"(recorded as forced)")
            ref = _reference_of(tags)
            if passed and not force and ref != current:
                against = (f"champion version {ref}" if ref is not None else
                           f"the {tags.get('ab.baseline', 'baseline')} baseline (there was no champion then)")
                now = f"version {current}" if current is not None else "no champion"
                raise RegistryError(f"version {version} passed its A/B against {against}, but the current champion "
                                    f"is {now}: that decision does not hold against it. Let a training run compare "
                                    f"again, or promote it with --force (recorded as forced)")
            return self.promote(version, "promote" if passed and not force else "force",
                                reason="seqrec promote" + (" --force" if force else ""))

    def rollback(self) -> dict:
        """`champion` back to the previous champion in the log."""
        with self.lock():
            self.reconcile(allow_missing=True)  # a deleted champion is what a rollback repairs
            stack = self.champion_stack()
            if len(stack) < 2:
                raise RegistryError("no previous champion to roll back to"
                                    + (f" (version {stack[0]} is the first)" if stack else " (no champion yet)"))
            target = stack[-2]
            if not self.exists(target):
                raise RegistryError(f"the previous champion, version {target}, no longer exists in MLflow; "
                                    f"make an existing version champion with `seqrec promote --version M --force`")
            entry = self._append({"action": "rollback", "version": target, "previous": stack[-1],
                                  "reason": "seqrec rollback"})
            self.client.set_registered_model_alias(self.name, CHAMPION, str(target))
            return {**entry, "alias_moved": True,
                    "warnings": self._tag_after_move(target, {"champion.since": entry["time"]})}


def open_registry(tcfg, workdir: Path, require_shared: bool = True) -> Registry:
    """The registry of `tcfg`'s store. Checked before any MLflow call: a store other than a local
    SQLite file needs `tracking.registry_dir` (storage shared by all its runners; ConfigError), and
    a registry directory recorded for another store is refused. `require_shared=False` is for
    read-only use (aliases, versions) that never takes the lock or writes the log."""
    from tasks.tracking import client_for, redact, registry_dir, sqlite_path, store_key, tracking_uri

    uri = tracking_uri(tcfg, workdir)
    # the default directory next to a SQLite file belongs to that file by construction (and moves
    # with it); only a configured registry_dir can be pointed at another store's log
    checked = tcfg.registry_dir is not None or sqlite_path(uri) is None
    reg = Registry(None, tcfg.model_name, registry_dir(tcfg, workdir, require_shared), tcfg.lock_timeout_s,
                   store=store_key(uri) if checked else None, store_label=redact(uri))
    reg.check_store()
    reg.client = client_for(tcfg, workdir)
    return reg


def register_version(tracking, mcfg, exclude_seen: bool, params: dict, flat_params: dict, workdir: Path,
                     run_dir: Path, summary: dict, data_path: Path, views: Path, model_path: Path,
                     flow_run_id: str | None) -> dict:
    """The run's model bundle, logged and registered as a version (alias challenger). Idempotent per
    run: a retry or resume gets the version an earlier attempt registered."""
    import shutil

    from tasks.bundle import write_bundle
    from tasks.tracking import log_and_register

    # before anything is written or registered: a store without a shared registry directory
    # (ConfigError) or a champion deleted in MLflow (RegistryError naming the repair) stops here,
    # instead of registering versions that can never be compared or promoted
    open_registry(tracking, workdir).check_champion()
    if (run_dir / "bundle").exists():  # an earlier attempt of this run (a retry or resume)
        shutil.rmtree(run_dir / "bundle")
    bundle = write_bundle(run_dir / "bundle", data_path, views, mcfg, model_path, exclude_seen)
    return log_and_register(tracking, workdir, run_dir, params, flat_params, summary, bundle, flow_run_id)


def promote_if_passed(registry: Registry, version: int, decision: dict, mlflow_run_id: str, log=print,
                      warn=print) -> bool:
    """Move `champion` to `version` when its A/B decision passed, and only against the champion that
    A/B compared with (the caller holds the registry lock, so a stale champion means a bug)."""
    if decision["decision"] != "pass":
        return False
    champion = registry.champion()
    if champion == version:  # a resumed run whose (reused) version an earlier attempt promoted
        log(f"version {version} is already the champion (promoted by an earlier attempt)")
        return True
    if champion != decision["reference_version"]:
        raise RegistryError(f"champion moved to {champion} after the A/B against "
                            f"{decision['reference_version']}; not promoting version {version}")
    entry = registry.promote(version, "promote", mlflow_run_id, decision, reason=f"A/B pass against {decision['baseline']}")
    # the alias moved: the promotion is done; bookkeeping that failed after it is a warning, not a failure
    for w in entry.get("warnings") or []:
        warn(f"promote: {w}")
    return True


def baseline_champion(tracking, abcfg, registry: Registry, workdir: Path, run_dir: Path, summary: dict,
                      data_path: Path, version: int, decision: dict, network_run_id: str | None, exclude_seen: bool,
                      flow_run_id: str | None, log=print, warn=print) -> dict | None:
    """A champion even when the network loses: when `version`'s A/B was against the baseline (there
    was no champion) and did not pass ('fail'), register that baseline itself as a version (a
    servable pyfunc, tagged kind=baseline, with the evaluation's metrics of it) and promote it, the
    reason recorded in the promotion log. The network version stays `challenger`. Returns what was
    done, or None when this does not apply (a pass, a champion exists, insufficient evidence, or
    `ab.baseline_champion` is off). The caller holds the registry lock."""
    from tasks.bundle import write_baseline_bundle
    from tasks.tracking import log_and_register_baseline

    name = decision.get("baseline")
    if not abcfg.baseline_champion or decision.get("decision") != "fail" \
            or decision.get("reference_version") is not None or name not in (summary.get("baselines") or {}):
        return None
    champion = registry.champion()
    if champion is not None:
        tags = registry.version(champion).tags or {}
        if tags.get("kind") == "baseline" and tags.get("baseline.run_id") == summary["run_id"]:
            log(f"the {name} baseline, version {champion}, is already the champion (promoted by an earlier attempt "
                f"of this run)")
            return {"version": champion, "baseline": name, "against": version, "reused": True,
                    "reason": f"promoted by an earlier attempt of run {summary['run_id']}"}
        return None  # the A/B compared with the baseline although a champion exists (this very version)
    # named `bundle` like the network's: the pyfunc's artifacts keep the directory's name (bundle_of)
    bundle = Path(run_dir) / f"{name}-baseline" / "bundle"
    if bundle.exists():  # an earlier attempt of this run (a retry or resume)
        import shutil

        shutil.rmtree(bundle)
    write_baseline_bundle(bundle, data_path, name, exclude_seen)
    reg = log_and_register_baseline(tracking, workdir, run_dir, summary, bundle, name, version, network_run_id,
                                    flow_run_id)
    m = reg["version"]
    why = "; ".join(decision.get("reasons") or []) or "-"
    # `seqrec models` shows these two columns: what it won against and that it is a baseline
    for k, v in {"ab.decision": "baseline_won", "ab.baseline": f"version {version}", "ab.reference_version": "none",
                 "ab.reasons": f"no champion yet; version {version} did not beat the {name} baseline ({why})"}.items():
        registry.client.set_model_version_tag(registry.name, str(m), k, v[:5000])
    reason = (f"no champion yet; the {name} baseline won the A/B against version {version}: baseline registered as "
              f"version {m} and promoted")
    entry = registry.promote(m, "promote", reg["mlflow_run_id"], decision, reason=reason,
                             extra={"kind": "baseline", "baseline": name, "network_version": int(version)})
    for w in entry.get("warnings") or []:
        warn(f"promote: {w}")
    log(reason)
    return {"version": m, "baseline": name, "against": version, "reused": bool(reg["reused"]), "reason": reason,
            "mlflow_run_id": reg["mlflow_run_id"], "model_uri": reg["model_uri"]}


def _reference_of(tags: dict) -> int | None:
    """The champion version a recorded A/B compared with (None: the baseline, no champion then)."""
    ref = tags.get("ab.reference_version")
    if ref is None:  # recorded before ab.reference_version existed: "version K" or a baseline's name
        base = tags.get("ab.baseline") or ""
        ref = base[len("version "):] if base.startswith("version ") else "none"
    if ref in ("none", ""):
        return None
    try:
        return int(ref)
    except ValueError:
        raise RegistryError(f"unreadable A/B reference tag ab.reference_version={ref!r}; "
                            f"promote with --force (recorded as forced)") from None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"
