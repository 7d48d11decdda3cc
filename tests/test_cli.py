from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


SEQREC = [sys.executable, "-m", "seqrec.cli"]


def _run(args, tmp_path, cache_dir, timeout=600):
    env = {**os.environ, "SEQREC_CACHE_DIR": str(cache_dir), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([*SEQREC, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_help_is_fast_and_lists_commands(tmp_path, cache_dir):
    import time

    t = time.perf_counter()
    out = _run(["--help"], tmp_path, cache_dir)
    assert out.returncode == 0 and "run" in out.stdout and "data" in out.stdout
    assert time.perf_counter() - t < 15


def test_bad_config_key_fails_before_anything_runs(tmp_path, cache_dir):
    out = _run(["run", "--set", "data.sourse=ml-100k", "--summary-json", "s.json", "--workdir", "wd"], tmp_path, cache_dir)
    assert out.returncode != 0
    assert "data.sourse" in out.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["status"] == "failed" and s["failed_stage"] == "config"
    assert not (tmp_path / "wd").exists()


def test_run_ml100k_until_preprocess_then_reuse(tmp_path, cache_dir):
    out = _run(["run", "--workdir", "wd", "--summary-json", "s.json", "--until", "preprocess"], tmp_path, cache_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["status"] == "completed" and s["failed_stage"] is None and s["error"] is None
    assert s["dataset"] == {"users": 943, "items": 1682, "events": 100000}
    assert set(s["timings_s"]) >= {"ingest", "validate_raw", "preprocess", "validate_processed"}
    version = Path(tmp_path / "wd" / "data" / s["data_version"])
    assert (version / "sequences.parquet").is_dir() and (version / "quality" / "summary.json").is_file()
    assert list((version / "quality").rglob("index.html")), "Data Docs HTML missing"
    out2 = _run(["run", "--workdir", "wd", "--summary-json", "s2.json", "--until", "preprocess"], tmp_path, cache_dir)
    s2 = json.loads((tmp_path / "s2.json").read_text())
    assert out2.returncode == 0 and s2["data_reused"] and s2["data_version"] == s["data_version"]


def test_run_on_missing_files_exits_nonzero_with_named_file(tmp_path, cache_dir):
    out = _run(["run", "--workdir", "wd", "--summary-json", "s.json", "--set", "data.source=files",
                "--set", "data.events=/no/such/dir"], tmp_path, cache_dir)
    assert out.returncode == 2  # a config error: paths are checked before anything runs
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["failed_stage"] == "config" and "data.events" in s["error"] and "rule:" in s["error"]
    assert "/no/such/dir" in out.stderr
    assert not (tmp_path / "wd").exists()
