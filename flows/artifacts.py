"""Prefect UI artifacts: data-quality table, A/B report, run summary. Keys: lowercase, digits, dashes."""

from __future__ import annotations

from typing import Any


def quality_artifact(results: list) -> None:
    from prefect.artifacts import create_table_artifact

    rows = [{"table": r.table, "column": o.rule.report_column or o.rule.column, "expectation": o.rule.text,
             "result": "pass" if o.success else "FAIL", "rows checked": o.element_count,
             "unexpected": o.unexpected_count, "quarantined": "yes" if o.quarantined else ""}
            for r in results for o in r.outcomes]
    ok = all(r.success for r in results)
    create_table_artifact(rows, key="data-quality",
                          description=f"Great Expectations gates: {'all passed' if ok else 'FAILED'} "
                                      f"({len(rows)} expectations over {len(results)} tables)")


def _mlflow_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"[MLflow run]({tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"MLflow run `{run_id}` in `{tracking_uri}` (open with `mlflow ui --backend-store-uri {tracking_uri}`)"


def ab_artifact(summary: dict[str, Any]) -> None:
    from prefect.artifacts import create_markdown_artifact

    ab, m, ml = summary["ab"], summary["model"], summary["mlflow"]
    guards = "\n".join(f"| {k} | {v.get('reference', '-') if v.get('reference') is not None else '-'} | "
                       f"{v['challenger']:.4g} | {v['limit']} | {'pass' if v['passed'] else 'FAIL'} |"
                       for k, v in ab["guardrails"].items())
    md = f"""# A/B: {m['name']} version {m['version']} vs {ab['baseline']}

**Decision: {ab['decision'].upper()}** {'(' + '; '.join(ab['reasons']) + ')' if ab['reasons'] else ''};
promoted: **{summary.get('promoted')}**, champion now: version {summary.get('champion')}

{_comparison(ab, guards)}

{_mlflow_link(m['tracking_uri'], ml['experiment_id'], ml['mlflow_run_id'])}; full report: `ab/ab_report.md` in its artifacts.
"""
    create_markdown_artifact(md, key="ab-report", description=f"A/B decision for version {m['version']}")


def _comparison(ab: dict[str, Any], guards: str) -> str:
    if ab["lift"] is None:  # refused: nothing was compared
        return ""
    sh = ab["shares"]
    return f"""| | value |
|---|---|
| primary metric | {ab['primary_metric']} |
| rule | {ab['mode']}: CI lower bound > {ab['threshold']:g} |
| test users (paired) | {ab['n_users']} |
| users better / worse / tied | {sh['better']:.1%} / {sh['worse']:.1%} / {sh['tied']:.1%} |
| mean lift | {ab['lift']:+.5f} |
| 95% bootstrap CI | [{ab['ci_low']:+.5f}, {ab['ci_high']:+.5f}] |
| p-value ({ab['test']}, one-sided: {ab['alternative']}) | {ab['p_value']:.4g} |

| guardrail | reference | challenger | limit | result |
|---|---|---|---|---|
{guards}
"""


def summary_artifact(summary: dict[str, Any]) -> None:
    from prefect.artifacts import create_markdown_artifact

    s = summary
    lines = [f"# seqrec run {s['run_id']}: {s['status']}"]
    if s["status"] != "completed":
        lines.append(f"\n**Failed at stage `{s.get('failed_stage')}`**: {s.get('error')}")
    lines.append("\n| stage | seconds |\n|---|---|")
    lines += [f"| {k} | {v:.2f} |" for k, v in s.get("timings_s", {}).items()]
    if s.get("data_version"):
        lines.append(f"\ndata version `{s['data_version']}`: {s.get('dataset')}")
    test = (s.get("metrics") or {}).get("test")
    if test:
        lines.append(f"\ntest NDCG@10 {test['ndcg@10']:.4f}, HR@10 {test['hr@10']:.4f}, "
                     f"baselines: " + ", ".join(f"{k} {v['test']['ndcg@10']:.4f}" for k, v in s["baselines"].items()))
    if s.get("model"):
        lines.append(f"\nregistered {s['model']['name']} version {s['model']['version']}; "
                     f"promoted: {s.get('promoted')}; champion: {s.get('champion')}")
    create_markdown_artifact("\n".join(lines), key="run-summary", description=f"seqrec run {s['run_id']}")


def drift_artifact(report) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(report.markdown(), key="drift-report",
                             description="today's data against the champion's: " +
                                         ("no reference" if report.reference is None else
                                          "within limits" if report.passed else "OVER the drift limits"))
