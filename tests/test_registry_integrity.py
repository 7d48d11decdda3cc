"""Integrity of the champion record (tasks/registry.py, tasks/tracking.py) on a real MLflow SQLite
store in a temporary directory: a torn log tail, `seqrec promote` honouring a pass only against the
current champion, one registered version per run, a champion deleted in MLflow, bookkeeping that
fails after the alias moved, and one lock + log per tracking store."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pandas as pd
import pytest


def _tcfg(tmp: Path, **kw):
    from tasks.tracking import TrackingConfig

    return TrackingConfig(tracking_uri=f"sqlite:///{(tmp / 'store' / 'mlflow.db').resolve()}", **kw)


def _registry(tmp: Path, **kw):
    from tasks.registry import open_registry

    return open_registry(_tcfg(tmp, **kw), tmp / "wd")


def _versions(reg, n: int) -> list[int]:
    """n versions of reg.name (a trivial local source directory each)."""
    from mlflow.exceptions import MlflowException

    try:
        reg.client.create_registered_model(reg.name)
    except MlflowException:
        pass
    out = []
    for i in range(n):
        src = reg.root.parent / "sources" / f"v{len(reg.versions()) + 1}"
        src.mkdir(parents=True)
        (src / "MLmodel").write_text("artifact_path: model\n")
        out.append(int(reg.client.create_model_version(reg.name, str(src)).version))
    return out


def _decision(decision: str, reference: int | None, baseline: str = "pop") -> dict:
    return {"decision": decision, "baseline": f"version {reference}" if reference else baseline,
            "reference_version": reference, "reasons": [], "lift": 0.01, "ci_low": 0.005, "ci_high": 0.02,
            "p_value": 0.001}


# ---------------------------------------------------------------------------------------- 1. torn tail

@pytest.mark.parametrize("torn", ['{"action": "promote", "vers', 'garbage{"action": "force"\n'])
def test_torn_log_tail_is_dropped_before_the_next_append(tmp_path, torn):
    reg = _registry(tmp_path)
    _versions(reg, 3)
    reg.promote(1, "promote")
    with open(reg.log_path, "a", encoding="utf-8") as f:
        f.write(torn)  # a crash mid-append (or an entry already glued to such a tail)
    assert reg.champion_stack() == [1]
    reg.promote(2, "promote")
    reg.promote(3, "promote")
    assert [e["version"] for e in reg.entries()] == [1, 2, 3]
    assert reg.champion_stack() == [1, 2, 3]
    assert reg.reconcile() == 3 and reg.champion() == 3
    lines = reg.log_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(json.loads(x) for x in lines)


# ------------------------------------------------------------- 2. promote honours a pass vs the champion

def test_promote_without_force_needs_a_pass_against_the_current_champion(tmp_path):
    from tasks.registry import RegistryError

    reg = _registry(tmp_path)
    _versions(reg, 5)
    reg.record_decision(1, _decision("pass", None))  # first run: against the baseline, no champion
    reg.record_decision(2, _decision("pass", 1))
    reg.record_decision(3, _decision("pass", 1))
    reg.record_decision(4, _decision("pass", None))
    assert reg.version(1).tags["ab.reference_version"] == "none"
    assert reg.version(2).tags["ab.reference_version"] == "1"
    assert reg.promote_command(1, force=False)["action"] == "promote"
    assert reg.promote_command(2, force=False)["action"] == "promote"
    with pytest.raises(RegistryError) as e:  # its pass was against version 1, the champion is now 2
        reg.promote_command(3, force=False)
    msg = str(e.value)
    assert "champion version 1" in msg and "current champion is version 2" in msg and "--force" in msg
    with pytest.raises(RegistryError) as e:  # a pass against the baseline, but there is a champion now
        reg.promote_command(4, force=False)
    assert "pop baseline" in str(e.value) and "version 2" in str(e.value) and "--force" in str(e.value)
    # recorded before ab.reference_version existed: the reference is read from ab.baseline
    reg.client.set_model_version_tag(reg.name, "5", "ab.decision", "pass")
    reg.client.set_model_version_tag(reg.name, "5", "ab.baseline", "version 1")
    with pytest.raises(RegistryError, match="champion version 1"):
        reg.promote_command(5, force=False)
    assert reg.champion() == 2
    forced = reg.promote_command(3, force=True)
    assert forced["action"] == "force" and reg.champion() == 3
    assert reg.version(3).tags["promotion.forced"] == "true"


# ------------------------------------------------------------------------ 3. one run, one version

def _stub_bundle(d: Path) -> Path:
    """What log_and_register reads of a bundle itself (the input example); the model is not loaded."""
    d.mkdir(parents=True)
    pd.DataFrame({"user_id": ["u1"]}).to_parquet(d / "histories.parquet")
    pd.DataFrame({"item_id": ["i1", "i2", "i3"]}).to_parquet(d / "items.parquet")
    (d / "bundle.json").write_text("{}")
    (d / "weights.pt").write_bytes(b"weights of the first attempt")
    return d


def test_registration_is_idempotent_per_run(tmp_path):
    from tasks.tracking import log_and_register

    cfg, wd = _tcfg(tmp_path), tmp_path / "wd"
    bundle = _stub_bundle(tmp_path / "bundle")
    summary = {"run_id": "r1", "data_version": "dv1", "metrics": {"test": {"ndcg@10": 0.1}}}

    def register(run_id: str, flow_run_id: str | None) -> dict:
        run_dir = wd / "runs" / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        return log_and_register(cfg, wd, run_dir, {"a": 1}, {"a": 1}, {**summary, "run_id": run_id}, bundle,
                                flow_run_id)

    first = register("r1", "flow-1")
    reg = _registry(tmp_path)
    # the first attempt died after registering: its run never finished, no challenger alias
    reg.client.set_terminated(first["mlflow_run_id"], "FAILED")
    reg.client.delete_registered_model_alias(reg.name, "challenger")
    again = register("r1", "flow-1")  # a resumed run: same seqrec run id
    retried = register("r1-retry", "flow-1")  # a Prefect retry: run id generated anew, same flow run
    assert [int(v.version) for v in reg.versions()] == [1]
    assert first["reused"] is False and again["reused"] is True and retried["reused"] is True
    keys = ("name", "version", "tracking_uri", "mlflow_run_id", "experiment_id", "model_uri")
    assert {k: again[k] for k in keys} == {k: first[k] for k in keys} == {k: retried[k] for k in keys}
    assert reg.client.get_run(first["mlflow_run_id"]).info.status == "FINISHED"
    assert reg.aliases()["challenger"] == 1
    # a retry that trained again to other weights registers them: what the A/B judges is what is promoted
    (bundle / "weights.pt").write_bytes(b"weights of a retrained attempt")
    retrained = register("r1-retry2", "flow-1")
    assert retrained["version"] == 2 and retrained["reused"] is False
    other = register("r2", None)  # another run registers its own version
    assert other["version"] == 3 and other["reused"] is False
    assert reg.version(3).tags["seqrec.run_id"] == "r2"


# ------------------------------------------------------------------- 4. champion deleted in MLflow

def test_deleted_champion_stops_reconcile_with_the_repair(tmp_path):
    from tasks.registry import RegistryError

    reg = _registry(tmp_path)
    _versions(reg, 2)
    reg.promote(1, "promote")
    reg.promote(2, "promote")
    reg.client.delete_model_version(reg.name, "2")
    for call in (reg.check_champion, reg.reconcile, lambda: reg.promote_command(1, force=False)):
        with pytest.raises(RegistryError) as e:
            call()
        msg = str(e.value)
        assert "champion version 2" in msg and "no longer exists" in msg, msg
        assert "`seqrec rollback` (back to version 1" in msg and "seqrec promote --version 1 --force" in msg, msg
    back = reg.rollback()  # the repair the message names
    assert back["version"] == 1 and reg.champion() == 1
    assert reg.check_champion() == 1 and reg.reconcile() == 1


def test_registration_checks_the_champion_before_registering(tmp_path):
    from models.net import ModelConfig
    from tasks.registry import RegistryError, register_version

    reg = _registry(tmp_path)
    _versions(reg, 2)
    reg.promote(1, "promote")
    reg.client.delete_model_version(reg.name, "1")
    run_dir = tmp_path / "wd" / "runs" / "r"
    run_dir.mkdir(parents=True)
    with pytest.raises(RegistryError) as e:
        register_version(_tcfg(tmp_path), ModelConfig(), True, {}, {}, tmp_path / "wd", run_dir, {"run_id": "r"},
                         tmp_path / "data", tmp_path / "views", run_dir / "model.pt", None)
    assert "champion version 1" in str(e.value) and "seqrec promote --version 2 --force" in str(e.value)
    assert not (run_dir / "bundle").exists()
    assert [int(v.version) for v in reg.versions()] == [2]


# -------------------------------------------------------- 5. bookkeeping after the alias moved

def test_tag_failure_after_the_alias_moved_is_a_warning(tmp_path):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.registry import Registry

    class TagsFail(MlflowClient):
        def set_model_version_tag(self, *args, **kwargs):
            raise MlflowException("tag write failed (store went away)")

    reg = _registry(tmp_path)
    _versions(reg, 2)
    uri = reg.client.tracking_uri
    failing = Registry(TagsFail(tracking_uri=uri, registry_uri=uri), reg.name, reg.root)
    entry = failing.promote(1, "force", reason="test")
    assert entry["alias_moved"] is True and len(entry["warnings"]) == 2
    assert "champion.since" in entry["warnings"][0] and "tag write failed" in entry["warnings"][0]
    assert reg.champion() == 1 and reg.champion_stack() == [1] and reg.reconcile() == 1
    failing.promote(2, "force")
    back = failing.rollback()
    assert back["version"] == 1 and back["warnings"] and reg.champion() == 1 and reg.reconcile() == 1


# ------------------------------------------------------- 6. one lock and log per tracking store

def test_two_workdirs_on_one_store_share_lock_and_log(tmp_path):
    from seqrec.errors import ConfigError
    from tasks.registry import RegistryError, open_registry

    shared = tmp_path / "shared-registry"
    cfg = _tcfg(tmp_path, registry_dir=str(shared))
    a, b = open_registry(cfg, tmp_path / "wd-a"), open_registry(cfg, tmp_path / "wd-b")
    assert a.lock_path == b.lock_path == shared / "registry.lock"
    assert a.log_path == b.log_path == shared / "promotions.jsonl"
    _versions(a, 1)
    a.promote(1, "promote")
    assert b.entries() == a.entries() and b.champion_stack() == [1] and b.champion() == 1
    impatient = dataclasses.replace(b, lock_timeout_s=0.3)
    got: dict = {}

    def other_runner():
        try:
            with impatient.lock(log=lambda m: None):
                got["lock"] = True
        except RegistryError as e:
            got["error"] = str(e)
    with a.lock():
        t = threading.Thread(target=other_runner)
        t.start()
        t.join(30)
    assert "still held" in got.get("error", ""), got
    marker = json.loads((shared / "tracking_store.json").read_text())
    assert marker["tracking_uri"] == cfg.tracking_uri
    # the same registry directory with another store: its champion is not this store's
    from tasks.tracking import TrackingConfig

    other = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}", registry_dir=str(shared))
    with pytest.raises(ConfigError, match="tracking.registry_dir"):
        open_registry(other, tmp_path / "wd-a")


def test_remote_store_needs_a_shared_registry_dir(tmp_path):
    """No server needed: the check comes before any call to it."""
    from models.net import ModelConfig
    from seqrec.errors import ConfigError
    from tasks.registry import open_registry, register_version
    from tasks.tracking import TrackingConfig, registry_dir

    remote = TrackingConfig(tracking_uri="http://127.0.0.1:9", http_retries=0)
    with pytest.raises(ConfigError) as e:
        open_registry(remote, tmp_path / "wd")
    assert "tracking.registry_dir" in str(e.value) and "shared by all runners" in str(e.value)
    assert not (tmp_path / "wd").exists()
    # ... and the training flow stops at register before writing or registering anything
    run_dir = tmp_path / "wd2" / "runs" / "r"
    run_dir.mkdir(parents=True)
    with pytest.raises(ConfigError, match="tracking.registry_dir"):
        register_version(remote, ModelConfig(), True, {}, {}, tmp_path / "wd2", run_dir, {"run_id": "r"},
                         tmp_path / "data", tmp_path / "views", Path("m.pt"), None)
    assert not (run_dir / "bundle").exists()
    shared = remote.model_copy(update={"registry_dir": str(tmp_path / "shared")})
    assert registry_dir(shared, tmp_path / "wd") == (tmp_path / "shared").resolve()
    # read-only commands (models, recommend, score) may still look at a remote store
    assert registry_dir(remote, tmp_path / "wd", require_shared=False) == (tmp_path / "wd").resolve() / "registry"


def test_a_complete_last_entry_without_its_newline_is_kept(tmp_path):
    """entries() counts a last line that is complete JSON, so the alias may already follow it: the
    next append completes the line instead of cutting it off."""
    from tasks.registry import Registry

    reg = Registry(client=None, name="m", root=tmp_path)
    reg._append({"action": "promote", "version": 1})
    with open(reg.log_path, "a") as f:
        f.write('{"action": "promote", "version": 2}')  # crash after the JSON, before the newline
    assert reg.champion_stack() == [1, 2]
    reg._append({"action": "promote", "version": 3})
    assert reg.champion_stack() == [1, 2, 3]
