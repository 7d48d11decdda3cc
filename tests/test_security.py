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


# --------------------------------------------------------------------------- persisted Prefect results


class _Planted:
    """Unpickling it creates `marker`: proof that a result file was unpickled (code ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _pickle_record(marker: Path) -> bytes:
    """A result file as Prefect's default (pickle) serializer writes it, carrying `_Planted`."""
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    return ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer()), result=_Planted(marker)).serialize()


def test_cached_results_are_typed_json_and_a_planted_pickle_never_runs(tmp_path, prefect_harness):
    """The cached stage's real task and storage: JSON on disk, read back as a cache hit; a pickle (or
    an unknown type) planted in its place is refused (a cache miss: recomputed), never unpickled."""
    import json

    from prefect import flow
    from prefect._internal.result_records import ResultRecord

    from tasks.features import ViewsConfig, views_path
    from tasks.results import result_storage
    from tasks.stages import features_task

    wd = tmp_path / "wd"
    data = wd / "data" / "v1"
    vcfg = ViewsConfig(text_encoder="tfidf")
    views = views_path(data, vcfg)
    views.mkdir(parents=True)  # what a cache lookup of the features stage expects to find
    storage = result_storage(wd)

    @flow
    def lookup() -> tuple[str, str]:
        state = features_task.with_options(result_storage=storage)(data_path=str(data), vcfg=vcfg, views=None,
                                                                   return_state=True)
        return state.name, state.result()

    assert lookup() == ("Completed", str(views))
    [file] = list((wd / "prefect-results").iterdir())
    record = json.loads(file.read_bytes())
    assert record["metadata"]["serializer"] == {"type": "seqrec-typed-json"}
    assert json.loads(record["result"]) == {"type": "str", "value": str(views)}  # JSON inside too: no pickle
    assert lookup() == ("Cached", str(views))

    # the planted payload is live: Prefect's own reader would run it
    assert ResultRecord.deserialize(_pickle_record(tmp_path / "potent")).result is None
    assert (tmp_path / "potent").is_dir()

    marker = tmp_path / "pwned"
    file.write_bytes(_pickle_record(marker))
    assert lookup() == ("Completed", str(views))  # refused: recomputed, not served from the file
    assert not marker.exists()
    assert json.loads(json.loads(file.read_bytes())["result"])["type"] == "str"  # rewritten as typed JSON

    for planted in ({"type": "os.system", "value": "echo pwned"}, {"type": "str", "value": "x", "extra": 1}):
        file.write_text(json.dumps({**record, "result": json.dumps(planted)}))
        assert lookup() == ("Completed", str(views))
    # a pickle serializer named at the top level (Prefect's legacy layout would let it win)
    file.write_text(json.dumps({**record, "serializer": {"type": "pickle", "picklelib": "cloudpickle"}}))
    assert lookup() == ("Completed", str(views)) and not marker.exists()


def test_the_result_serializer_reads_known_types_only():
    from tasks.preprocess import PreprocessResult
    from tasks.results import ResultFileError, TypedJSONSerializer, checked_record

    ser = TypedJSONSerializer()
    res = PreprocessResult(data_version="abc", path="/w/data/abc", counts={"users": 3}, drops={"dup": 1}, seconds=1.5)
    assert ser.loads(ser.dumps(res)) == res and ser.loads(ser.dumps("/w/v")) == "/w/v"
    with pytest.raises(TypeError, match="not a cached result type"):
        ser.dumps(_Planted(Path("x")))
    for blob, rule in ((b'{"type": "builtins.eval", "value": "1"}', "not a typed result"),
                       (b'{"type": "str", "type": "PreprocessResult", "value": "x"}', "duplicate keys"),
                       (b"\x80\x04\x95", "not JSON")):
        with pytest.raises(ResultFileError, match=rule):
            ser.loads(blob)
    with pytest.raises(ResultFileError, match="is not 'seqrec-typed-json'"):
        checked_record(b'{"metadata": {"serializer": {"type": "json"}}, "result": "{}"}')


# --------------------------------------------------------------------------- addresses and paths from parameters


@pytest.mark.parametrize("key, value, rule", [
    ("dask.address", "inproc://evil", "scheme 'inproc' is not allowed"),
    ("dask.address", "ucx://127.0.0.1:8786", "scheme 'ucx' is not allowed"),
    ("dask.address", "tcp://attacker.example:8786", "host 'attacker.example' is not allowed"),
    ("dask.address", "127.0.0.1:8786", "names no scheme"),
    ("dask.local_directory", "/tmp/seqrec-spill-elsewhere", "outside the work directory"),
    ("tracking.tracking_uri", "http://attacker.example:5000", "host 'attacker.example' is not allowed"),
    ("tracking.tracking_uri", "postgresql://db.example/mlflow", "scheme 'postgresql' is not allowed"),
    ("tracking.tracking_uri", "file:///etc/mlruns", "outside the work directory"),
    ("tracking.tracking_uri", "sqlite://", "sqlite:///<path"),
    ("tracking.artifact_location", "s3://attacker-bucket/models", "scheme 's3' is not allowed"),
    ("tracking.artifact_location", "mlflow-artifacts://attacker.example/x", "host 'attacker.example' is not allowed"),
    ("tracking.model_name", "../../etc/x", "not a plain name"),
])
def test_hostile_addresses_and_names_are_refused(tmp_path, key, value, rule):
    from flows.config import check_paths, load_config
    from seqrec.errors import ConfigError

    wd = tmp_path / "wd"
    with pytest.raises(ConfigError) as e:
        check_paths(load_config(None, [f"{key}={value}"]), wd)
    assert str(e.value).startswith(key) and rule in str(e.value), str(e.value)
    assert not wd.exists()


def test_allowed_addresses_and_the_infra_configs_pass(tmp_path):
    import yaml

    from flows.config import check_paths, load_config, validate_config

    wd = tmp_path / "wd"
    sets = ["dask.address=tcp://127.0.0.1:8786", "tracking.tracking_uri=https://mlflow.seqrec.svc:5000",
            "tracking.artifact_location=mlflow-artifacts:/seqrec", f"tracking.registry_dir={wd / 'registry'}"]
    cfg = check_paths(load_config(None, sets), wd)
    assert cfg.dask.address == "tcp://127.0.0.1:8786" and cfg.tracking.artifact_location == "mlflow-artifacts:/seqrec"
    widened = check_paths(load_config(None, ["dask.address=tls://sched.example:8786",
                                             "dask.allowed_hosts=[sched.example]"]), wd)
    assert widened.dask.address == "tls://sched.example:8786"
    infra = Path(__file__).resolve().parents[1] / "infra"
    k8s = next(d for d in yaml.safe_load_all((infra / "k8s" / "namespace.yaml").read_text()) if d["kind"] == "ConfigMap")
    for cfg in (load_config(infra / "seqrec-cluster.yaml"), validate_config(yaml.safe_load(k8s["data"]["seqrec.yaml"]))):
        ok = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"registry_dir": str(wd / "registry")})})
        assert check_paths(ok, wd).dask.address == cfg.dask.address


def test_a_run_id_cannot_climb_out_of_runs(tmp_path, prefect_harness):
    from flows.config import PipelineConfig
    from flows.training import training_flow

    wd = tmp_path / "wd"
    state = training_flow(config=PipelineConfig(), workdir=str(wd), run_id="../../escape", return_state=True)
    assert state.is_failed() and "run_id" in str(state.message) + repr(state.result(raise_on_failure=False))
    assert not (tmp_path / "escape").exists()


# --------------------------------------------------------------------------- the scoring flow's paths


def _score_outside_registry(tmp, wd):
    return [f"tracking.registry_dir={tmp / 'elsewhere'}"], "tracking.registry_dir", "outside the work directory"


def _score_symlinked_scores_dir(tmp, wd):
    (tmp / "target").mkdir()
    wd.mkdir()
    (wd / "scores").symlink_to(tmp / "target")  # looks inside, resolves outside
    return [], "<workdir>/scores", "outside the work directory"


def _score_symlinked_registry(tmp, wd):
    (tmp / "target").mkdir()
    wd.mkdir()
    (wd / "registry").symlink_to(tmp / "target")
    return [], "<workdir>/registry", "outside the work directory"


def _score_workdir_is_a_file(tmp, wd):
    wd.write_text("not a directory")
    return [], "--workdir", "must be a directory"


def _score_hostile_tracking_server(tmp, wd):
    return ["tracking.tracking_uri=http://attacker.example:5000"], "tracking.tracking_uri", "not allowed"


SCORE_CASES = [v for k, v in sorted(globals().items()) if k.startswith("_score_")]


@pytest.mark.parametrize("case", SCORE_CASES, ids=[c.__name__[7:] for c in SCORE_CASES])
def test_scoring_flow_refuses_hostile_paths_before_writing(case, tmp_path, prefect_harness):
    from flows.config import load_config
    from flows.scoring import scoring_flow

    wd = tmp_path / "wd"
    sets, key, rule = case(tmp_path, wd)
    before = sorted(p.name for p in wd.iterdir()) if wd.is_dir() else None
    state = scoring_flow(config=load_config(None, sets), workdir=str(wd), return_state=True)
    assert state.is_failed()
    message = str(state.message) + repr(state.result(raise_on_failure=False))
    assert key in message and rule in message, message
    assert (sorted(p.name for p in wd.iterdir()) if wd.is_dir() else None) == before, "the work directory was written"
    assert not (tmp_path / "elsewhere").exists()
    assert not (tmp_path / "target").exists() or not any((tmp_path / "target").iterdir())


# --------------------------------------------------------------------------- server pid files


def test_server_stop_never_signals_a_process_it_did_not_start(tmp_path):
    import json
    import subprocess

    from seqrec.servers import ServerConfig, _pid, server_dir, status, stop

    d = server_dir(tmp_path)
    d.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (d / "prefect.pid").write_text(str(bystander.pid))  # a plain pid (older seqrec, or planted)
        ident = {"pid": bystander.pid, "create_time": 1.0, "cmdline": ["sleep", "60"]}  # a pid since reused
        (d / "mlflow.pid").write_text(json.dumps(ident))
        assert _pid(d, "prefect") is None and _pid(d, "mlflow") is None
        assert status(ServerConfig(prefect_port=1, mlflow_port=1), tmp_path)["processes"]["mlflow"]["pid"] is None
        lines: list[str] = []
        stop(ServerConfig(prefect_port=1, mlflow_port=1), tmp_path, log=lines.append, timeout_s=2)
        assert bystander.poll() is None, "stop signalled a process it did not start"
        assert not (d / "prefect.pid").exists() and not (d / "mlflow.pid").exists()
        assert all("stale pid file removed" in line for line in lines) and len(lines) == 2, lines
    finally:
        bystander.kill()
        bystander.wait()


def test_server_stop_still_stops_what_it_started(tmp_path):
    """The start path's own spawn and pid record (a stand-in command: the real servers are
    exercised by tests/test_orchestration.py's served deployment)."""
    import psutil

    from seqrec.servers import ServerConfig, _pid, _spawn, server_dir, stop

    d = server_dir(tmp_path)
    d.mkdir(parents=True)
    pid = _spawn(d, "prefect", ["sleep", "60"], dict(os.environ))
    assert _pid(d, "prefect") == pid
    stop(ServerConfig(prefect_port=1, mlflow_port=1), tmp_path, log=lambda m: None, timeout_s=10)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (d / "prefect.pid").exists()
    os.waitpid(pid, 0)  # our child: reap it


# --------------------------------------------------------------------------- serving never returns filler


@pytest.fixture(scope="module")
def small_bundle(synth_version, tmp_path_factory):
    from models.net import ModelConfig
    from models.train import TrainConfig
    from tasks.bundle import write_bundle
    from tasks.features import ViewsConfig, build_views
    from tasks.train import train

    tmp = tmp_path_factory.mktemp("bundle")
    views = build_views(synth_version, ViewsConfig(text_encoder="tfidf"), tmp / "c")
    mcfg = ModelConfig(dim=16, layers=1, max_len=10)
    tr = train(synth_version, views, mcfg, TrainConfig(epochs=1, threads=1, progress=False), 0, tmp / "run",
               log=lambda m: None)
    return write_bundle(tmp / "bundle", synth_version, views, mcfg, Path(tr["model_path"]), True)


def test_top_k_beyond_the_catalogue_returns_real_unseen_items_only(small_bundle):
    import numpy as np
    import pandas as pd

    from seqrec.encoding import ITEM_FIRST
    from tasks.bundle import Scorer, write_scores

    scorer = Scorer(small_bundle)
    real = set(scorer.item_ids[ITEM_FIRST:].astype(str))
    big = 10 * scorer.n_items
    users = list(scorer.hist_index[:5])
    hist = [str(scorer.item_ids[ITEM_FIRST]), "never-seen-item"]
    out = scorer.recommend(pd.DataFrame({"user_id": users + [None, "new-user"],
                                         "history": [None] * 5 + [hist, None]}), k=big)
    for row in out.itertuples():
        assert row.item_ids and set(row.item_ids) <= real and len(set(row.item_ids)) == len(row.item_ids)
        assert "None" not in row.item_ids and not any(s == -np.inf for s in row.scores)
    for row, user in zip(out.itertuples(), users):
        seen = set(scorer.item_ids[np.asarray(scorer.hist["items"][scorer.user_rows([user])[0]])].astype(str))
        assert not seen & set(row.item_ids)
        assert len(row.item_ids) == len(real) - len(seen)  # every rankable item, and nothing else
    assert hist[0] not in out["item_ids"].iat[5] and len(out["item_ids"].iat[5]) == len(real) - 1
    assert len(out["item_ids"].iat[6]) == len(real)  # popular items for an unknown user
    frame = scorer.score_all(k=big)
    assert set(frame["item_id"]) <= real and np.isfinite(frame["score"]).all()
    assert frame.groupby("user_id")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1))).all()
    stats = write_scores(scorer, small_bundle.parent / "scores.parquet", big)
    assert stats["rows"] == len(frame)
