"""`seqrec` command line. Heavy libraries are imported inside commands so `--help` stays fast."""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="seqrec: multi-view sequential recommender pipeline (Prefect + Dask + GX + torch + MLflow).")
data_app = typer.Typer(no_args_is_help=True, help="Inspect your own logs, fetch or generate datasets.")
app.add_typer(data_app, name="data")

STAGE_HELP = ("stop after this stage: ingest, validate_raw, preprocess, validate_processed, features, select, train, "
             "evaluate, "
              "register, compare, promote")


def _env_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # the ephemeral Prefect server's 20 s start-up budget ran out on a busy 2-core machine (CI,
    # during the test suite): a run should wait for its own server, not fail
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # a user error is one clear line on the console (seqrec/logfilter.py); Dask workers inherit both
    os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(Path(__file__).with_name("logging.yml")))
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import logging

    for name in ("great_expectations", "distributed", "distributed.scheduler", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _console(stderr: bool = False):
    """A rich console; tables keep their columns when output goes to a file or pipe (rich's 80)."""
    from rich.console import Console

    con = Console(stderr=stderr)
    return con if con.is_terminal else Console(stderr=stderr, width=160)


def _fail(msg: str, code: int = 2) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML pipeline config")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override: dotted.key=value")] = None,
    workdir: Annotated[Path, typer.Option(help="all outputs of the run go here")] = Path(".seqrec"),
    summary_json: Annotated[Optional[Path], typer.Option(help="write the run summary (JSON) here")] = None,
    until: Annotated[Optional[str], typer.Option(help=STAGE_HELP)] = None,
    refresh: Annotated[bool, typer.Option(help="recompute cached pure stages (preprocess, features)")] = False,
    debug: Annotated[bool, typer.Option(help="also show the tracebacks of bad-input and config errors")] = False,
) -> None:
    """Run the training flow (a Prefect flow run; an ephemeral Prefect server unless PREFECT_API_URL is set)."""
    if debug:
        os.environ["SEQREC_DEBUG"] = "1"
    _env_defaults()
    from flows.config import load_config
    from seqrec.errors import SeqrecError

    from flows.config import check_paths

    try:
        cfg = check_paths(load_config(config, set_ or []), workdir)
    except SeqrecError as e:
        _write_summary(summary_json, {"status": "failed", "failed_stage": "config", "error": str(e)})
        _fail(str(e))
    from flows.training import STAGES, training_flow

    if until is not None and until not in STAGES:
        _fail(f"--until must be one of {STAGES}, got '{until}'")
    workdir = workdir.resolve()
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    state = training_flow(config=cfg, workdir=str(workdir), run_id=run_id, until=until, refresh=refresh,
                          return_state=True)
    summary_path = workdir / "runs" / run_id / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {
        "status": "failed", "failed_stage": "flow", "error": str(state.message)}
    if not state.is_completed() and summary.get("status") != "failed":
        summary.update(status="failed", failed_stage=summary.get("failed_stage") or "flow", error=str(state.message))
    _write_summary(summary_json, summary)
    _print_summary(summary)
    if summary["status"] != "completed":
        raise typer.Exit(1)


def _write_summary(path: Optional[Path], summary: dict) -> None:
    if path:
        from seqrec.fsutil import write_json_atomic

        write_json_atomic(path, summary)


def _print_summary(s: dict) -> None:
    from rich.table import Table

    con = _console()
    if s["status"] != "completed":
        _console(stderr=True).print(f"[bold red]run failed[/] at stage [bold]{s.get('failed_stage')}[/]: {s.get('error')}",
                                   highlight=False, soft_wrap=True)
        if s.get("quality"):
            _console(stderr=True).print(f"data-quality report: {s['quality']['report_dir']}")
        return
    t = Table(title=f"seqrec run {s['run_id']}: completed", show_header=True)
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for k, v in s["timings_s"].items():
        t.add_row(k, f"{v:.2f}")
    con.print(t)
    if s.get("dataset"):
        con.print(f"data version [bold]{s['data_version']}[/] ({'reused' if s.get('data_reused') else 'new'}): "
                  f"{s['dataset']}; dropped: {s.get('drops')}")
    if s.get("metrics"):
        m = Table(title="metrics (test split, full ranking)")
        for col in ("model", "ndcg@10", "hr@10", "mrr@10", "coverage@10"):
            m.add_column(col, justify="right" if col != "model" else "left")
        rows = [("seqrec", s["metrics"]["test"])] + [(k, v["test"]) for k, v in s.get("baselines", {}).items()]
        for name, met in rows:
            m.add_row(name, *(f"{met.get(k, float('nan')):.4f}" for k in ("ndcg@10", "hr@10", "mrr@10", "coverage@10")))
        con.print(m)
    if s.get("model"):
        con.print(f"registered [bold]{s['model']['name']}[/] version {s['model']['version']} "
                  f"(alias challenger) in {s['model']['tracking_uri']}")
    if s.get("ab"):
        ab = s["ab"]
        stats = (f"{ab['primary_metric']} lift {ab['lift']:+.4f} [{ab['ci_low']:+.4f}, {ab['ci_high']:+.4f}], "
                 f"one-sided p={ab['p_value']:.3g}: " if ab.get("lift") is not None else "")
        con.print(f"A/B vs {ab['baseline']}: {stats}[bold]{ab['decision'].upper()}[/]"
                  + (f" ({'; '.join(ab['reasons'])})" if ab["reasons"] else ""), highlight=False)
    if s.get("selection"):
        sel = s["selection"]
        con.print(f"model selection (select.auto): [bold]{sel['winner']}[/] on validation NDCG@10 ("
                  + ", ".join(f"{k} {v['validation_ndcg@10']:.4f}" for k, v in sel["candidates"].items()) + ")",
                  highlight=False)
    if s.get("baseline_champion"):
        con.print(f"champion: version {s.get('champion')}, the {s['baseline_champion'].get('baseline', 'baseline')} "
                  f"baseline (it won the A/B; the network stays challenger)", highlight=False)
    elif "promoted" in s:
        con.print(f"champion: version {s.get('champion')}" + (" (promoted now)" if s["promoted"] else " (unchanged)"))
    con.print(f"run directory: {s['run_dir']}")


# --------------------------------------------------------------------------- registry commands

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML pipeline config (tracking section)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override: dotted.key=value")]
WorkdirOpt = Annotated[Path, typer.Option(help="work directory of the runs (default store: <workdir>/mlflow.db)")]


def _config(config: Optional[Path], set_: Optional[list[str]], workdir: Path):
    """(PipelineConfig with checked paths, absolute workdir)."""
    _env_defaults()
    from flows.config import check_paths, load_config
    from seqrec.errors import SeqrecError

    try:
        return check_paths(load_config(config, set_ or []), workdir), workdir.resolve()
    except SeqrecError as e:
        _fail(str(e))


def _registry(config: Optional[Path], set_: Optional[list[str]], workdir: Path, write: bool = True):
    """(Registry, TrackingConfig, workdir) from the same config the training flow reads. `write`:
    the command takes the registry lock / appends to the promotion log, so a store other than a
    local SQLite file needs a shared `tracking.registry_dir`."""
    from seqrec.errors import SeqrecError
    from tasks.registry import open_registry

    cfg, workdir = _config(config, set_, workdir)
    try:
        return open_registry(cfg.tracking, workdir, require_shared=write), cfg.tracking, workdir
    except SeqrecError as e:
        _fail(str(e))


def redact(uri: str) -> str:
    from tasks.tracking import redact as _redact

    return _redact(uri)


def _model_uri(name: str, alias: Optional[str], version: Optional[int]) -> str:
    return f"models:/{name}/{version}" if version is not None else f"models:/{name}@{alias}"


def _load_pyfunc(reg, alias: Optional[str], version: Optional[int]):
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = _model_uri(reg.name, alias, version)
    try:
        return mlflow.pyfunc.load_model(uri), uri
    except MlflowException as e:
        _fail(f"cannot load {uri} from {redact(reg.client.tracking_uri)}: {e.message.splitlines()[0]}")


@app.command()
def models(
    config: ConfigOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = Path(".seqrec"),
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Registered versions: aliases, headline metrics and A/B decisions."""
    reg, tcfg, _ = _registry(config, set_, workdir, write=False)
    aliases = reg.aliases()
    by_version: dict[int, list[str]] = {}
    for a, v in aliases.items():
        by_version.setdefault(v, []).append(a)
    rows = []
    for mv in reg.versions():
        t = mv.tags or {}
        rows.append({"version": int(mv.version), "aliases": sorted(by_version.get(int(mv.version), [])),
                     "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.creation_timestamp / 1000)),
                     "run_id": mv.run_id, "data_version": t.get("data_version"),
                     "kind": t.get("baseline", "baseline") if t.get("kind") == "baseline" else "network",
                     "test_ndcg@10": float(t["test.ndcg_at_10"]) if "test.ndcg_at_10" in t else None,
                     "decision": t.get("ab.decision"), "baseline": t.get("ab.baseline"),
                     "lift": float(t["ab.lift"]) if "ab.lift" in t else None,
                     "ci": [float(t["ab.ci_low"]), float(t["ab.ci_high"])] if "ab.ci_low" in t else None,
                     "p_value": float(t["ab.p_value"]) if "ab.p_value" in t else None,
                     "forced": t.get("promotion.forced") == "true"})
    if as_json:
        typer.echo(json.dumps({"name": reg.name, "tracking_uri": redact(reg.client.tracking_uri), "versions": rows},
                              indent=2))
        return
    from rich.table import Table

    if not rows:
        typer.echo(f"no versions of '{reg.name}' in {redact(reg.client.tracking_uri)}")
        return
    t = Table(title=f"{reg.name} @ {redact(reg.client.tracking_uri)}")
    for col in ("version", "kind", "aliases", "created", "data version", "test ndcg@10", "A/B vs", "decision",
                "lift [95% CI]", "p"):
        t.add_column(col, justify="right" if col in ("version", "test ndcg@10", "p") else "left")
    for r in rows:
        ci = f"{r['lift']:+.4f} [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]" if r["ci"] else "-"
        t.add_row(str(r["version"]), r["kind"], ", ".join(r["aliases"]) + (" (forced)" if r["forced"] else ""), r["created"],
                  r["data_version"] or "-", f"{r['test_ndcg@10']:.4f}" if r["test_ndcg@10"] is not None else "-",
                  r["baseline"] or "-", r["decision"] or "-", ci,
                  f"{r['p_value']:.3g}" if r["p_value"] is not None else "-")
    _console().print(t)


@app.command()
def promote(
    version: Annotated[int, typer.Option("--version", help="model version to make champion")],
    force: Annotated[bool, typer.Option("--force", help="promote even without a passing A/B (recorded as forced)")] = False,
    config: ConfigOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = Path(".seqrec"),
) -> None:
    """Move `champion` to a version whose A/B passed (or any version with --force)."""
    from seqrec.errors import SeqrecError

    reg, _, _ = _registry(config, set_, workdir)
    try:
        entry = reg.promote_command(version, force)
    except SeqrecError as e:
        _fail(str(e))
    typer.echo(f"champion: {reg.name} version {entry['version']} (was {entry['previous']}; "
               f"{'forced' if entry['action'] == 'force' else 'A/B passed'}); logged in {reg.log_path}")
    _warn(entry)


@app.command()
def rollback(config: ConfigOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = Path(".seqrec")) -> None:
    """Move `champion` back to the previous champion in the promotion log."""
    from seqrec.errors import SeqrecError

    reg, _, _ = _registry(config, set_, workdir)
    try:
        entry = reg.rollback()
    except SeqrecError as e:
        _fail(str(e))
    typer.echo(f"champion: {reg.name} version {entry['version']} (rolled back from {entry['previous']})")
    _warn(entry)


def _warn(entry: dict) -> None:
    """Bookkeeping that failed after the alias moved: the command succeeded, say what is missing."""
    for w in entry.get("warnings") or []:
        _console(stderr=True).print(f"[bold yellow]warning:[/] {w}", highlight=False, soft_wrap=True)


@app.command()
def recommend(
    user: Annotated[Optional[str], typer.Option("--user", help="user id (history from the model's training data)")] = None,
    history: Annotated[Optional[str], typer.Option(help="comma-separated item ids, oldest first (users it never saw)")] = None,
    k: Annotated[int, typer.Option(min=1)] = 10,
    alias: Annotated[str, typer.Option(help="registered-model alias")] = "champion",
    version: Annotated[Optional[int], typer.Option(help="a version instead of the alias")] = None,
    config: ConfigOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = Path(".seqrec"),
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Top-k items for one user from the registered model (loaded through MLflow, like a server would)."""
    import pandas as pd

    if user is None and history is None:
        _fail("give --user ID and/or --history ITEM,ITEM,...")
    reg, _, _ = _registry(config, set_, workdir, write=False)
    model, uri = _load_pyfunc(reg, alias, version)
    frame = pd.DataFrame({"user_id": [user], "history": [[h.strip() for h in history.split(",") if h.strip()]
                                                           if history else None], "k": [k]})
    out = model.predict(frame).iloc[0]
    if as_json:
        typer.echo(json.dumps({"model": uri, "user_id": user, "source": out["source"],
                               "items": [{"item_id": i, "score": s} for i, s in zip(out["item_ids"], out["scores"])]}))
        return
    from rich.table import Table

    note = {"user": "from the user's stored history", "history": "from the given history",
            "popular": "user unknown to this model and no history given: most popular items"}[out["source"]]
    t = Table(title=f"{uri}: top {k} for {user or 'the given history'} ({note})")
    t.add_column("rank", justify="right")
    t.add_column("item_id")
    t.add_column("score", justify="right")
    for r, (i, s) in enumerate(zip(out["item_ids"], out["scores"]), 1):
        t.add_row(str(r), i, f"{s:.4f}")
    _console().print(t)


@app.command()
def score(
    out: Annotated[Path, typer.Option(help="parquet file: user_id, rank, item_id, score")],
    k: Annotated[int, typer.Option(min=1)] = 10,
    alias: Annotated[str, typer.Option(help="registered-model alias")] = "champion",
    version: Annotated[Optional[int], typer.Option(help="a version instead of the alias")] = None,
    config: ConfigOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = Path(".seqrec"),
) -> None:
    """Batch top-k for every user the model knows, written atomically to parquet."""
    reg, _, _ = _registry(config, set_, workdir, write=False)
    model, uri = _load_pyfunc(reg, alias, version)
    from tasks.bundle import write_scores

    stats = write_scores(model.unwrap_python_model().scorer, out, k)
    typer.echo(f"{uri}: top {k} for {stats['users']} users -> {out} in {stats['seconds']:.2f}s "
               f"({stats['users_per_s']:.0f} users/s)")


@app.command("serve-model")
def serve_model(
    host: Annotated[Optional[str], typer.Option(help="bind address (default serve.host, 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="default serve.port (8080)")] = None,
    alias: Annotated[Optional[str], typer.Option(help="the alias to answer with and follow (default champion)")] = None,
    poll_s: Annotated[Optional[float], typer.Option(help="how often the aliases are checked (default 10 s)")] = None,
    config: ConfigOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = Path(".seqrec"),
) -> None:
    """Serve the champion over HTTP (POST /recommend, /recommend/batch, /events, /invocations; GET
    /health, /ready, /metrics), following its alias: a promotion or rollback is served without a
    restart. SIGHUP checks the alias at once."""
    from seqrec.errors import SeqrecError

    cfg, workdir = _config(config, set_, workdir)
    changes = {k: v for k, v in {"host": host, "port": port, "alias": alias, "poll_s": poll_s}.items() if v is not None}
    try:
        from serving.config import ServeConfig
        from serving.service import run as serve_run

        scfg = ServeConfig.model_validate({**cfg.serve.model_dump(), **changes})
        typer.echo(f"seqrec serving @{scfg.alias} of '{cfg.tracking.model_name}' on http://{scfg.host}:{scfg.port} "
                   f"(alias checked every {scfg.poll_s:g}s; GET /ready says when a model is loaded)")
        serve_run(scfg, cfg.tracking, workdir)
    except (SeqrecError, ValueError) as e:
        _fail(str(e))


@app.command("serve-report")
def serve_report(
    config: ConfigOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = Path(".seqrec"),
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The online A/B replayed from the service's impressions: each logged list scored against the
    user's next event, per user, with the offline gate's paired statistics."""
    from seqrec.errors import SeqrecError

    cfg, workdir = _config(config, set_, workdir)
    from serving.replay import online_report
    from serving.service import open_store, store_path

    try:
        store = open_store(cfg.serve.store, store_path(cfg.serve, workdir))
        rep = online_report(store, cfg.ab, cfg.serve.outcome_horizon_s, cfg.seed)
    except SeqrecError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(rep, indent=2))
        return
    typer.echo(rep["text"])


# --------------------------------------------------------------------------- servers and deployments

server_app = typer.Typer(no_args_is_help=True, help="Local Prefect + MLflow servers (127.0.0.1 by default).")
app.add_typer(server_app, name="server")


def _server_cfg(config: Optional[Path], set_: Optional[list[str]]):
    _env_defaults()
    from flows.config import load_config
    from seqrec.errors import SeqrecError

    try:
        return load_config(config, set_ or [])
    except SeqrecError as e:
        _fail(str(e))


@server_app.command("start")
def server_start(config: ConfigOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = Path(".seqrec")) -> None:
    """Start a Prefect server and an MLflow server on this work directory's store; waits until healthy."""
    from seqrec import servers
    from seqrec.errors import SeqrecError

    cfg = _server_cfg(config, set_)
    try:
        st = servers.start(cfg.server, workdir, log=typer.echo)
    except SeqrecError as e:
        _fail(str(e))
    typer.echo(f"Prefect UI/API: {st['prefect_api_url'].removesuffix('/api')}   MLflow UI: {st['mlflow_tracking_uri']}")
    typer.echo(f"use them:  export PREFECT_API_URL={st['prefect_api_url']}   then  seqrec serve --workdir {workdir}")


@server_app.command("stop")
def server_stop(config: ConfigOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = Path(".seqrec")) -> None:
    """Stop both servers (SIGTERM to their process groups, SIGKILL after 30 s)."""
    from seqrec import servers

    servers.stop(_server_cfg(config, set_).server, workdir, log=typer.echo)


@server_app.command("status")
def server_status(config: ConfigOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = Path(".seqrec"),
                  as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Whether the servers run, and their URLs."""
    from seqrec import servers

    st = servers.status(_server_cfg(config, set_).server, workdir)
    if as_json:
        typer.echo(json.dumps({k: st[k] for k in ("prefect_api_url", "mlflow_tracking_uri", "running")}))
        return
    for name, p in st["processes"].items():
        typer.echo(f"{name}: {'running' if p['pid'] else 'stopped'} (pid {p['pid']}), "
                   f"{'healthy' if p['healthy'] else 'not answering'}; log {st['logs'][name]}")
    typer.echo(f"prefect api: {st['prefect_api_url']}  mlflow: {st['mlflow_tracking_uri']}")


@app.command()
def serve(
    config: ConfigOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = Path(".seqrec"),
    training_cron: Annotated[Optional[str], typer.Option(help="default: server.training_cron")] = None,
    scoring_cron: Annotated[Optional[str], typer.Option(help="default: server.scoring_cron")] = None,
) -> None:
    """Serve the training and scoring deployments on the Prefect server (blocks; Ctrl-C stops and
    pauses the schedules). Runs started from the UI use their edited parameters."""
    from seqrec import servers

    cfg = _server_cfg(config, set_)
    api = servers.api_url_for(cfg.server, workdir)
    if not api:
        _fail("no Prefect server: start one with `seqrec server start` (or set PREFECT_API_URL)")
    os.environ["PREFECT_API_URL"] = api  # before prefect is imported: its settings are read once
    from prefect import serve as prefect_serve

    from flows.scoring import scoring_flow
    from flows.training import training_flow

    wd = str(workdir.resolve())
    params = {"config": cfg.model_dump(mode="json", by_alias=True), "workdir": wd}
    tz = cfg.server.timezone
    deployments = [
        training_flow.to_deployment(name="seqrec-training", cron=training_cron or cfg.server.training_cron,
                                    parameters=params, tags=["seqrec"], description="Retrain, A/B and promote"),
        scoring_flow.to_deployment(name="seqrec-scoring", cron=scoring_cron or cfg.server.scoring_cron,
                                   parameters=params, tags=["seqrec"], description="Batch top-k from champion"),
    ]
    for d in deployments:
        if d.schedules:
            for sch in d.schedules:
                sch.schedule.timezone = tz
    typer.echo(f"serving seqrec-training/seqrec-training and seqrec-scoring/seqrec-scoring on {api} "
               f"(work directory {wd})")
    prefect_serve(*deployments)


@data_app.command("inspect")
def data_inspect(
    events: Annotated[str, typer.Option(help="events: a file, directory or glob (parquet, CSV/TSV, JSON Lines; .gz/.zst)")],
    users: Annotated[Optional[str], typer.Option(help="users table: file, directory or glob")] = None,
    items: Annotated[Optional[str], typer.Option(help="items table: file, directory or glob")] = None,
    max_rows: Annotated[int, typer.Option(min=1, help="read at most this many rows per table")] = 2_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """What the pipeline would see in your files (columns, roles, units, nulls, ids, time span, repeats)
    and the config that reads them. Writes nothing."""
    import yaml

    from seqrec.errors import SeqrecError
    from tasks.inspect import inspect

    try:
        rep = inspect(events, users, items, max_rows)
    except SeqrecError as e:
        _fail(str(e))
    if as_json:
        typer.echo(rep.model_dump_json(indent=2))
        return
    from rich.table import Table

    con = _console()
    for t in rep.tables:
        tab = Table(title=f"{t.table}: {t.rows} rows{' (sampled)' if t.sampled else ''} from {len(t.files)} file(s), "
                          f"{', '.join(t.formats)}")
        for col in ("column", "type", "role", "nulls", "distinct", "examples"):
            tab.add_column(col)
        for c in t.columns:
            tab.add_row(c.name, c.dtype, c.role or "", f"{c.null_fraction:.1%}", str(c.distinct), ", ".join(c.examples))
        con.print(tab)
    p = rep.profile
    if p:
        con.print(f"events {p.events}, users {p.users}, items {p.items}; events per user median {p.events_per_user_median:g} "
                  f"(mean {p.events_per_user_mean:.1f}), per item median {p.events_per_item_median:g}; "
                  f"{p.users_with_3_or_more_events:.0%} of users have 3+ events", highlight=False)
        con.print(f"time: {p.timestamp_kind}{f' ({p.timestamp_unit})' if p.timestamp_unit else ''}, "
                  f"{p.time_min_utc} .. {p.time_max_utc} UTC; repeats: {p.repeat_rate:.1%} of events revisit an item "
                  f"({p.consecutive_repeat_rate:.1%} the previous one)", highlight=False)
        if p.event_types:
            con.print("event types: " + ", ".join(f"{k} {v}" for k, v in p.event_types.items())
                      + (f"; {p.null_event_types} null (read as data.null_event_type)" if p.null_event_types else ""),
                      highlight=False)
    for problem in rep.problems:
        con.print(f"[bold yellow]note:[/] {problem}", highlight=False)
    con.print("\n[bold]config[/] (save as my-data.yaml, then `seqrec run -c my-data.yaml`):")
    con.print(yaml.safe_dump(rep.config, sort_keys=False), highlight=False, markup=False)


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="dataset name: ml-100k")],
    from_dir: Annotated[Optional[Path], typer.Option("--from", help="local GroupLens dir with u.data/u.user/u.item")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="default: $SEQREC_CACHE_DIR or ~/.cache/seqrec")] = None,
    force: bool = typer.Option(False, help="fetch again even if cached"),
) -> None:
    """Fetch a public dataset into the cache, verify it and write it in the standard layout."""
    from seqrec.errors import SeqrecError
    from tasks.sources import DataConfig, cache_root, fetch_ml100k, verify_cached

    if name != "ml-100k":
        _fail(f"unknown dataset '{name}' (known: ml-100k)")
    try:
        root = fetch_ml100k(cache_root(DataConfig(cache_dir=str(cache_dir) if cache_dir else None)), from_dir, force)
        verify_cached(root)
    except SeqrecError as e:
        _fail(str(e))
    manifest = json.loads((root / "MANIFEST.json").read_text())
    typer.echo(f"ml-100k ready at {root} ({manifest['origin']}): {manifest['counts']}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="output directory (events/, users.parquet, items.parquet)")],
    shape: Annotated[Optional[str], typer.Option(
        help="benchmark shape that sets the options below (the ones given win): default; sparse-longtail "
             "(50k users, 50k items, 500k events, median 6 events per user (at most 500), zipf 1.1, follow 0.2, "
             "new session 0.3, starts within 180 days, no side information); dense-successors (2k users, 1k items, "
             "200k events, follow 0.8)")] = None,
    users: Annotated[Optional[int], typer.Option(min=1, help="users (default: 2000)")] = None,
    items: Annotated[Optional[int], typer.Option(min=2, help="items (default: 500)")] = None,
    events: Annotated[Optional[int], typer.Option(min=1, help="events (default: 100000)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed; the output is a function of it (default: 0)")] = None,
    follow: Annotated[Optional[float], typer.Option(
        help="probability that the next item is one of the previous item's 3 fixed successors (default: 0.45)")] = None,
    skip: Annotated[Optional[float], typer.Option(
        help="probability that it is a fixed second-order successor of the item two back (default: 0)")] = None,
    start_days: Annotated[Optional[float], typer.Option(
        help="users start within this many days from 2020-01-01 (default: spread over 2020-2024)")] = None,
    zipf: Annotated[Optional[float], typer.Option(
        help="exponent of item popularity, 1/rank**zipf; higher: heavier head, longer tail (default: 0.9)")] = None,
    events_per_user_median: Annotated[Optional[float], typer.Option(
        help="median events per user; the long tail's mean is events/users (default: about 0.73 x events/users)")] = None,
    min_events_per_user: Annotated[Optional[int], typer.Option(help="events per user, at least (default: 3)")] = None,
    max_events_per_user: Annotated[Optional[int], typer.Option(help="events per user, at most (default: no cap)")] = None,
    new_session: Annotated[Optional[float], typer.Option(
        help="probability that an event starts a new session (~2 days later, not ~3 minutes) (default: 0.15)")] = None,
    side_info: Annotated[Optional[bool], typer.Option(
        "--side-info/--no-side-info",
        help="write users.parquet and items.parquet; --no-side-info: events only (default: --side-info)")] = None,
) -> None:
    """Generate a synthetic dataset with a learnable multi-view signal (chunked; scales to 1e8 events).

    The options are the settings of `data.synthetic` (data.source=synthetic): the same settings and seed
    write the same files."""
    from seqrec.configtree import validate_tree
    from seqrec.errors import SeqrecError
    from seqrec.fsutil import atomic_dir
    from tasks.sources import SynthConfig
    from tasks.synthetic import generate

    given = {k: v for k, v in dict(
        shape=shape, users=users, items=items, events=events, seed=seed, follow=follow, skip=skip,
        start_days=start_days, zipf=zipf, events_per_user_median=events_per_user_median,
        min_events_per_user=min_events_per_user, max_events_per_user=max_events_per_user,
        new_session=new_session, side_info=side_info).items() if v is not None}
    try:
        cfg = validate_tree(SynthConfig, given, "seqrec data synth options")
    except SeqrecError as e:
        _fail(str(e))
    if out.exists() and any(out.iterdir()):
        _fail(f"{out} exists and is not empty")
    t = time.perf_counter()
    if out.exists():
        out.rmdir()
    with atomic_dir(out) as tmp:
        manifest = generate(cfg.users, cfg.items, cfg.events, cfg.seed, tmp, **cfg.generator_kwargs())
    typer.echo(f"wrote {manifest['counts']} to {out} in {time.perf_counter() - t:.1f}s")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
