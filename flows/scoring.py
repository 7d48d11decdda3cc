"""The scoring flow: batch top-k for every user the `champion` knows, written atomically to parquet
under <workdir>/scores/. Composition only; the work is tasks.bundle.write_scores. Its parameters are
checked like the training flow's (flows.config.check_paths) before anything is written."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.config import PipelineConfig, check_paths
from seqrec.errors import ConfigError


@task(name="score", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30])
def score_task(config: PipelineConfig, workdir: Path, alias: str, k: int) -> dict:
    from tasks.bundle import Scorer, write_scores
    from tasks.registry import RegistryError, open_registry
    from tasks.tracking import bundle_of

    reg = open_registry(config.tracking, workdir, require_shared=False)  # reads an alias only
    version = reg.aliases().get(alias)
    if version is None:
        raise RegistryError(f"model '{reg.name}' has no alias '{alias}' yet (run the training flow first)")
    out = workdir / "scores" / f"{reg.name}-v{version}-{time.strftime('%Y%m%dT%H%M%S')}.parquet"
    with tempfile.TemporaryDirectory(prefix="seqrec-score-") as tmp:
        stats = write_scores(Scorer(bundle_of(reg.client, reg.name, version, Path(tmp))), out, k)
    latest = workdir / "scores" / "latest.parquet"
    tmp_link = latest.with_name(".latest.tmp")
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(out.name)
    tmp_link.replace(latest)
    return {**stats, "path": str(out), "version": int(version), "alias": alias, "model": reg.name}


@flow(name="seqrec-scoring", log_prints=True)
def scoring_flow(config: PipelineConfig = PipelineConfig(), workdir: str = ".seqrec", alias: str = "champion",  # noqa: B008
                 k: int = 10) -> dict[str, Any]:
    """Top-k recommendations for all known users from the registered model under `alias`."""
    from prefect.artifacts import create_markdown_artifact

    # before anything is written: a deployment's parameters skip the CLI's check
    config = check_paths(config, workdir)
    if k < 1:
        raise ConfigError(f"k={k}: must be >= 1")
    res = score_task(config, Path(workdir).resolve(), alias, k)
    get_run_logger().info("scored %d users with %s v%d in %.2fs -> %s", res["users"], res["model"], res["version"],
                          res["seconds"], res["path"])
    create_markdown_artifact(f"# Batch scoring\n\n{res['model']} version {res['version']} (@{alias}): top {k} for "
                             f"{res['users']} users in {res['seconds']:.2f}s ({res['users_per_s']:.0f} users/s)\n\n"
                             f"`{res['path']}`", key="scoring-summary")
    return res
