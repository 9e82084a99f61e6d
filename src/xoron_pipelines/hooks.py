"""Project hooks: parameter validation before any node, MLflow runs of killed processes closed,
a short summary after a run."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from rich.console import Console
from rich.table import Table

from xoron_pipelines.validation import validate_all

log = logging.getLogger(__name__)

#: columns of the training summary: (header, key in ``<stage>.train_summary``, format)
_TRAIN_COLUMNS = (("stage", "stage", "{}"), ("mix", "data_mix", "{}"), ("procs", "processes", "{}"),
                  ("steps", "steps", "{}"), ("tokens", "tokens_seen", "{:,}"),
                  ("train loss", "train_loss", "{:.3f}"), ("val loss", "eval_loss", "{:.3f}"),
                  ("val ppl", "eval_perplexity", "{:.1f}"), ("unigram H", "unigram_entropy", "{:.3f}"),
                  ("tok/s", "tokens_per_s", "{:.0f}"), ("wall s", "wall_s", "{:.0f}"))


class ParameterValidationHook:
    """Validate all parameters as soon as the context exists, before any node runs."""

    @hook_impl
    def after_context_created(self, context) -> None:
        # the --params of `kedro run` (Kedro keeps them on the context) name the command line as
        # the origin of a bad value
        validated = validate_all(context.params, getattr(context, "_runtime_params", None))
        log.debug("validated parameter groups: %s", sorted(validated))


class StaleRunsHook:
    """Tag the ``kedro run``'s MLflow run with its process, and end as KILLED the runs that a
    killed earlier process left RUNNING (see :func:`xoron_pipelines.tracking.mark_dead_runs`).

    kedro-mlflow (a plugin, so its hooks run before the project's) has opened the run by then;
    without an active run (tracking disabled) there is nothing to do."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        from xoron_pipelines.tracking import mark_dead_runs, process_tags

        try:
            import mlflow

            run = mlflow.active_run()
            if run is None:
                return
            mlflow.set_tags(process_tags())
            mark_dead_runs([run.info.experiment_id], keep={run.info.run_id})
        except Exception as exc:  # bookkeeping of old runs must never stop this one
            log.warning("could not check for MLflow runs left RUNNING by killed processes: %s", exc)


def _cell(summary: dict[str, Any], key: str, fmt: str) -> str:
    value = summary.get(key)
    return "-" if value is None else fmt.format(value)


def run_summary(outputs: set[str], load) -> list[Table]:
    """Tables for what this run produced: training stages, stage comparison, export formats."""
    from xoron_pipelines.pipelines.training.pipeline import STAGES

    tables = []
    order = [stage for group in STAGES.values() for stage in group]
    stages = [f"{stage}.train_summary" for stage in order if f"{stage}.train_summary" in outputs]
    if stages:
        table = Table(title="training stages")
        for header, _, _ in _TRAIN_COLUMNS:
            table.add_column(header, justify="left" if header == "stage" else "right")
        for name in stages:
            summary = load(name)
            table.add_row(*(_cell(summary, key, fmt) for _, key, fmt in _TRAIN_COLUMNS))
        tables.append(table)
    if "evaluation_comparison" in outputs:
        frame = load("evaluation_comparison")
        table = Table(title="evaluation by stage")
        stage_cols = [c for c in frame.columns if c not in ("metric", "better") and not c.startswith("delta_")]
        for col in ("metric", *stage_cols):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for _, row in frame.iterrows():
            table.add_row(str(row["metric"]), *(f"{row[c]:.4g}" for c in stage_cols))
        tables.append(table)
    if "export_manifest" in outputs:
        manifest = load("export_manifest")
        table = Table(title=f"export of stage {manifest.get('source')}")
        table.add_column("format")
        table.add_column("written")
        for fmt, info in manifest.get("formats", {}).items():
            entries = info if isinstance(info, list) else [info, *(v for v in info.values() if isinstance(v, dict))]
            paths = (e.get("path") or e.get("file") for e in entries)
            written = ", ".join(str(p) for p in paths if p)
            table.add_row(fmt, written or f"nothing: {info.get('reason', 'not produced')}")
        tables.append(table)
    return tables


class RunSummaryHook:
    """Print a short summary table at the end of ``kedro run`` (what was trained, evaluated, exported)."""

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        outputs = set(pipeline.all_outputs())
        try:
            tables = run_summary(outputs, catalog.load)
        except Exception as exc:  # a summary must never turn a finished run into a failure
            log.warning("no run summary: %s", exc)
            return
        console = Console(width=max(Console().width, 132))  # logs are often not a terminal (80 columns)
        for table in tables:
            console.print(table)
