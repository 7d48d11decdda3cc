"""Security defaults: credentials only from the environment and never written anywhere, servers on
127.0.0.1, checkpoints loaded with weights_only (a pickled object in a checkpoint is refused)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SECRETS = {"MLFLOW_TRACKING_PASSWORD": "pw-7c1d9e2a-mlflow", "AWS_SECRET_ACCESS_KEY": "pw-5b8f03c4-aws",
           "POSTGRES_PASSWORD": "pw-9a2e61d7-postgres"}


def test_password_in_config_uri_is_refused_and_redacted_elsewhere():
    from flows.config import load_config
    from seqrec.errors import ConfigError
    from tasks.tracking import redact

    with pytest.raises(ConfigError, match=r"tracking\.tracking_uri.*must not contain a password"):
        load_config(None, ["tracking.tracking_uri=http://alice:hunter2@mlflow:5000"])
    assert redact("postgresql://seqrec:hunter2@db:5432/mlflow") == "postgresql://seqrec:***@db:5432/mlflow"
    assert redact("http://mlflow:5000") == "http://mlflow:5000"


def test_environment_secrets_never_reach_the_work_directory_or_logs(tmp_path, cache_dir):
    """A whole `seqrec run` (its own process: the logs are its output) with secrets in the environment."""
    import json
    import subprocess
    import sys

    import yaml

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "synthetic", "synthetic": {"users": 300, "items": 80,
                                                                                 "events": 12_000, "seed": 7}},
                                   "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2},
                                   "model": {"dim": 32, "max_len": 20},
                                   "train": {"batch_size": 64, "threads": 1, "epochs": 2},
                                   "ab": {"baseline": "pop", "latency_users": 10}}))
    env = {**os.environ, **SECRETS, "SEQREC_CACHE_DIR": str(cache_dir), "PREFECT_HOME": str(tmp_path / "ph")}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    wd = tmp_path / "wd"
    res = subprocess.run([str(Path(sys.executable).with_name("seqrec")), "run", "--config", str(cfg), "--workdir",
                          str(wd), "--summary-json", str(tmp_path / "s.json")], capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "s.json").read_text())
    assert out["status"] == "completed" and out["model"]["version"] == 1
    files = [p for p in wd.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any(p.suffix == ".parquet" for p in files)
    for value in SECRETS.values():
        assert value not in res.stdout and value not in res.stderr
        for p in files:
            assert value.encode() not in p.read_bytes(), f"{value} leaked into {p}"


def test_servers_bind_loopback_by_default(tmp_path):
    from seqrec.servers import ServerConfig, _commands

    cmds = _commands(ServerConfig(), tmp_path)
    for cmd in cmds.values():
        assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


class _NotAWeight:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    from models.train import Trainer

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"epoch": 0, "model": {}, "payload": _NotAWeight()}, ckpt / "last.pt")
    trainer = Trainer.__new__(Trainer)  # only the resume path is exercised
    trainer.ckpt_dir, trainer.device, trainer.log = ckpt, torch.device("cpu"), print
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        trainer.try_resume()


def test_one_runs_store_does_not_leak_into_the_next_run_in_the_same_process(tmp_path):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; seqrec must not then resolve another
    work directory's default store to the first one (found when the suite ran in CI order)."""
    from tasks.tracking import TrackingConfig, client_for, tracking_uri

    before = os.environ.get("MLFLOW_TRACKING_URI")
    client_for(TrackingConfig(), tmp_path / "a")
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    if before is None:
        assert tracking_uri(TrackingConfig(), tmp_path / "b") == f"sqlite:///{(tmp_path / 'b').resolve() / 'mlflow.db'}"
