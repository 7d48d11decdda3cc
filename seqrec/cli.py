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
data_app = typer.Typer(no_args_is_help=True, help="Fetch or generate datasets.")
app.add_typer(data_app, name="data")

STAGE_HELP = "stop after this stage: ingest, validate_raw, preprocess, validate_processed, features, train, evaluate"


def _env_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import logging

    for name in ("great_expectations", "distributed", "distributed.scheduler", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
) -> None:
    """Run the training flow (a Prefect flow run; an ephemeral Prefect server unless PREFECT_API_URL is set)."""
    _env_defaults()
    from flows.config import load_config
    from seqrec.errors import SeqrecError

    try:
        cfg = load_config(config, set_ or [])
    except SeqrecError as e:
        _write_summary(summary_json, {"status": "failed", "failed_stage": "config", "error": str(e)})
        _fail(str(e))
    from flows.training import STAGES, training_flow

    if until is not None and until not in STAGES:
        _fail(f"--until must be one of {STAGES}, got '{until}'")
    workdir = workdir.resolve()
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    state = training_flow(config=cfg, workdir=str(workdir), run_id=run_id, until=until, return_state=True)
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
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=False)
    if s["status"] != "completed":
        Console(stderr=True).print(f"[bold red]run failed[/] at stage [bold]{s.get('failed_stage')}[/]: {s.get('error')}",
                                   highlight=False, soft_wrap=True)
        if s.get("quality"):
            Console(stderr=True).print(f"data-quality report: {s['quality']['report_dir']}")
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
    con.print(f"run directory: {s['run_dir']}")


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
    users: int = typer.Option(2000, min=1),
    items: int = typer.Option(500, min=2),
    events: int = typer.Option(100_000, min=1),
    seed: int = typer.Option(0),
) -> None:
    """Generate a synthetic dataset with a learnable multi-view signal (chunked; scales to 1e8 events)."""
    from seqrec.fsutil import atomic_dir
    from tasks.synthetic import generate

    if out.exists() and any(out.iterdir()):
        _fail(f"{out} exists and is not empty")
    t = time.perf_counter()
    if out.exists():
        out.rmdir()
    with atomic_dir(out) as tmp:
        manifest = generate(users, items, events, seed, tmp)
    typer.echo(f"wrote {manifest['counts']} to {out} in {time.perf_counter() - t:.1f}s")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
