"""Data that arrives: partition folders read up to a cut-off (the data version covers exactly
them), and the drift report + gate between the champion's data and today's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from seqrec.errors import DataContractError, SeqrecError
from tests.conftest import copy_workdir


def _partitioned(root: Path) -> Path:
    """events/date=2026-11-28 .. date=2026-11-30, one parquet file each (the same file name in each)."""
    ev = root / "events"
    for day, (lo, hi) in {"2026-11-28": (0, 40), "2026-11-29": (40, 80), "2026-11-30": (80, 120)}.items():
        d = ev / f"date={day}"
        d.mkdir(parents=True)
        rows = range(lo, hi)
        pd.DataFrame({"user_id": [f"u{i % 7}" for i in rows], "item_id": [f"i{i % 11}" for i in rows],
                      "timestamp": [1_764_288_000 + 600 * i for i in rows]}).to_parquet(d / "part-0.parquet")
    (ev / "_SUCCESS").write_text("")
    return ev


def test_a_cut_off_reads_the_partitions_up_to_it(tmp_path):
    from tasks.sources import DataConfig, resolve_inputs

    ev = _partitioned(tmp_path)
    two = resolve_inputs(DataConfig(source="files", events=str(ev), until="2026-11-29"))
    assert two.partitions == ["2026-11-28", "2026-11-29"] and len(two.events) == 2
    assert all("2026-11-30" not in f for f in two.events)
    assert two.summary()["inputs"]["partitions"] == ["2026-11-28", "2026-11-29"]
    assert two.summary()["inputs"]["event_files"] == 2 and "rebuilt" in two.summary()["inputs"]["incremental"]
    three = resolve_inputs(DataConfig(source="files", events=str(ev), until="2026-11-30"))
    everything = resolve_inputs(DataConfig(source="files", events=str(ev)))
    assert len(three.events) == 3 and three.fingerprint == everything.fingerprint != two.fingerprint
    assert everything.partitions == [] and everything.summary() == {}
    import datetime as dt

    from tasks.sources import cut_off

    today = dt.datetime.now(dt.timezone.utc).date()
    assert cut_off("today") == today.isoformat() and cut_off("yesterday") == (today - dt.timedelta(days=1)).isoformat()
    assert cut_off("2026-11-29") == "2026-11-29"
    from flows.config import load_config

    assert load_config(None, ["data.until=2026-11-29"]).data.until == "2026-11-29"  # YAML reads it as a date


def test_cut_off_errors_name_the_file_and_the_rule(tmp_path):
    from tasks.sources import DataConfig, resolve_inputs

    ev = _partitioned(tmp_path)
    with pytest.raises(DataContractError, match="no partition `date=<value>` with a value <= it .*'2026-11-28'"):
        resolve_inputs(DataConfig(source="files", events=str(ev), until="2026-01-01"))
    shutil.copy(ev / "date=2026-11-28" / "part-0.parquet", ev / "loose.parquet")
    with pytest.raises(DataContractError, match="loose.parquet.*not inside a `date=<value>` folder"):
        resolve_inputs(DataConfig(source="files", events=str(ev), until="2026-11-30"))
    with pytest.raises(SeqrecError, match="needs data.source=files"):
        resolve_inputs(DataConfig(source="ml-100k", until="2026-11-30"))


@pytest.mark.slow
def test_a_partition_cut_off_runs_through_the_data_stages(tmp_path, prefect_harness):
    from flows.config import validate_config
    from flows.training import training_flow

    ev = _partitioned(tmp_path)
    base = {"data": {"source": "files", "events": str(ev)}, "dask": {"processes": False, "n_workers": 1},
            "preprocess": {"min_user_events": 2, "min_item_events": 1}, "drift": {"mode": "off"}}
    wd = tmp_path / "wd"
    out = {}
    for until in ("2026-11-29", "2026-11-30"):
        cfg = validate_config({**base, "data": {**base["data"], "until": until}})
        out[until] = training_flow(config=cfg, workdir=str(wd), until="preprocess", run_id=f"until-{until}")
    a, b = out["2026-11-29"], out["2026-11-30"]
    assert a["status"] == b["status"] == "completed"
    assert a["inputs"]["partitions"] == ["2026-11-28", "2026-11-29"] and len(b["inputs"]["partitions"]) == 3
    assert a["data_version"] != b["data_version"]
    assert a["dataset"]["events"] == 80 and b["dataset"]["events"] == 120


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The same generator settings twice (seed 7), and a log with another popularity (seed 8, zipf 1.4)."""
    from tasks.synthetic import generate
    from tests.conftest import preprocessed_version

    out = []
    for name, kwargs in (("a", {"seed": 7}), ("b", {"seed": 8, "zipf": 1.4})):
        src = tmp_path_factory.mktemp(f"drift-{name}")
        seed = kwargs.pop("seed")
        generate(300, 80, 12_000, seed, src, **kwargs)
        out.append(preprocessed_version(src, tmp_path_factory.mktemp(f"wd-drift-{name}")))
    return out[0], out[0], out[1]


def test_no_drift_against_itself_and_a_shift_is_measured(two_versions, tmp_path):
    from tasks.drift import DriftConfig, compare

    a, same, b = two_versions
    flat = compare(a, same, DriftConfig(), 1)
    assert flat.passed and flat.figures["popularity_js"] == 0 and flat.figures["new_item_event_share"] == 0
    assert flat.figures["events_ratio"] == 1 and all(c["value"] == 0 for c in flat.columns)
    shifted = compare(a, b, DriftConfig(), 1)
    f = shifted.figures
    assert f["popularity_js"] > 0.1 and f["events_per_user_ks"] >= 0
    assert {c["table"] for c in shifted.columns} == {"users", "items"}
    strict = compare(a, b, DriftConfig(max_popularity_js=0.01), 1)
    assert not strict.passed and [c["check"] for c in strict.checks if not c["passed"]][0] == "popularity_js"
    out = strict.write(tmp_path / "drift")
    assert json.loads((out / "drift.json").read_text())["passed"] is False
    assert "| popularity_js |" in (out / "drift.md").read_text()


@pytest.mark.slow
def test_the_gate_stops_a_run_before_training(registry_scenario, tmp_path, prefect_harness):
    """drift.mode=stop with a limit today's data breaks: the run fails at `drift`, nothing is trained
    or registered, and the error names the check; under warn the same data trains."""
    from tasks.registry import open_registry
    from tasks.tracking import TrackingConfig
    from flows.training import training_flow
    from tests.conftest import REGISTRY_SYNTH, registry_cfg

    src, _ = registry_scenario
    wd = tmp_path / "wd"
    copy_workdir(src, wd)
    before = len(open_registry(TrackingConfig(), wd).versions())
    shifted = {**REGISTRY_SYNTH, "events": 20_000, "zipf": 1.4}
    cfg = registry_cfg(data__synthetic=shifted, drift__mode="stop", drift__max_popularity_js=0.01, train__epochs=1)
    with pytest.raises(SeqrecError, match="drift gate .*popularity_js = .* above"):
        training_flow(config=cfg, workdir=str(wd), run_id="drifted")
    summary = json.loads((wd / "runs" / "drifted" / "summary.json").read_text())
    assert summary["failed_stage"] == "drift" and "train" not in summary["timings_s"]
    assert "popularity_js" in summary["error"]
    report = json.loads((wd / "runs" / "drifted" / "drift" / "drift.json").read_text())
    assert [c["check"] for c in report["checks"] if not c["passed"]] == ["popularity_js"]
    assert len(open_registry(TrackingConfig(), wd).versions()) == before
    ok = training_flow(config=registry_cfg(data__synthetic=shifted, drift__max_popularity_js=0.01, train__epochs=1),
                       workdir=str(wd), run_id="warned", until="drift")
    assert ok["status"] == "completed" and ok["drift"]["passed"] is False


@pytest.fixture(scope="module")
def scenario_copy(registry_scenario, tmp_path_factory) -> Path:
    src, _ = registry_scenario
    wd = tmp_path_factory.mktemp("arrival") / "wd"
    copy_workdir(src, wd)
    return wd


def test_warm_start_maps_items_by_id(scenario_copy, tmp_path):
    """The champion's weights land in a network of another data version: same item id, same row."""
    import numpy as np
    import torch

    from seqrec.catalog import DataVersion
    from tasks.bundle import Scorer
    from tasks.registry import open_registry
    from tasks.tracking import TrackingConfig, bundle_of
    from tasks.train import build_net
    from tasks.warm import warm_start

    reg = open_registry(TrackingConfig(), scenario_copy)
    champ = reg.champion()
    bundle = bundle_of(reg.client, reg.name, champ, tmp_path / "b")
    old = Scorer(bundle)
    data = scenario_copy / "data" / reg.version(champ).tags["data_version"]
    views = next(p for p in (data / "views").iterdir() if p.is_dir())
    same = build_net(data, views, old.cfg)
    stats = warm_start(same, bundle, DataVersion(data).item_ids())
    assert stats["parameters_copied"] == stats["parameters"] and stats["items"]["new"] == 0
    for (name, p), (_, q) in zip(same.named_parameters(), old.net.named_parameters()):
        assert torch.equal(p, q), name
    # another data version (fewer events, other ids kept): rows follow the item ids
    other = [d for d in (scenario_copy / "data").iterdir() if d.is_dir() and d.name != data.name and
             DataVersion(d).exists()]
    if other:
        dv = DataVersion(other[0])
        net = build_net(dv.path, next(p for p in (dv.path / "views").iterdir() if p.is_dir()), old.cfg)
        stats = warm_start(net, bundle, dv.item_ids())
        ids = dv.item_ids()
        for idx in range(2, min(dv.n_items, 30)):
            j = old.item_idx([ids[idx]])[0]
            if j > 1:
                assert torch.equal(net.items.id_emb.weight[idx], old.net.items.id_emb.weight[j])
        assert stats["items"]["matched"] > 0 and np.isfinite(net.items.id_emb.weight.detach().numpy()).all()


@pytest.mark.slow
def test_a_warm_started_run_records_where_it_started(scenario_copy, prefect_harness):
    from flows.training import training_flow
    from tests.conftest import REGISTRY_SYNTH, registry_cfg

    cfg = registry_cfg(data__synthetic={**REGISTRY_SYNTH, "events": 20_000}, train__init_from="champion",
                       train__epochs=2)
    out = training_flow(config=cfg, workdir=str(scenario_copy), run_id="warm", until="train")
    w = out["training"]["warm_start"]
    assert out["status"] == "completed" and w["from"].startswith("seqrec v")
    assert w["parameters_copied"] == w["parameters"] and w["items"]["matched"] > 0
    assert out["drift"]["reference"] is not None  # the drift stage compared with the champion's data
