"""``evaluation``: every training stage's model on the same held-out data and benchmarks.

One modular per-stage pipeline (perplexity -> multiple choice -> generation -> collect) is
instantiated for each stage in :data:`~.params.STAGES` under the namespace ``<stage>``, reading
``<stage>.model`` (``data/06_models/<stage>``) and writing ``evaluation_results_<stage>`` /
``evaluation_metrics_<stage>`` (MLflow) / ``evaluation_samples_<stage>``. A final node compares
the stages selected by ``evaluation.compare_stages`` (table + plotly chart for kedro viz).
Run one stage alone with ``kedro run --pipeline evaluation --namespaces language``.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline, pipeline

from .nodes import (collect, compare_stages, evaluate_generation, evaluate_multiple_choice, evaluate_perplexity,
                    generate_offline_tasks)
from .params import STAGES

SHARED = {"packed_val", "tokenizer", "evaluation_generated_tasks"}
STAGE_OUTPUTS = ("evaluation_results", "evaluation_metrics", "evaluation_samples")  # -> <name>_<stage>


def _for_stage(func, stage: str):
    """``func`` with ``stage=`` bound, keeping its name for kedro viz."""
    return update_wrapper(partial(func, stage=stage), func)


def stage_pipeline(stage: str) -> Pipeline:
    """The evaluation of one stage's model, namespaced ``<stage>``."""
    template = Pipeline([
        Node(evaluate_perplexity, ["model", "packed_val", "tokenizer", "evaluation_generated_tasks",
                                   "params:evaluation"], "perplexity", name="perplexity"),
        Node(evaluate_multiple_choice, ["model", "tokenizer", "evaluation_generated_tasks", "params:evaluation"],
             ["multiple_choice", "multiple_choice_records"], name="multiple_choice"),
        Node(_for_stage(evaluate_generation, stage),
             ["model", "tokenizer", "evaluation_generated_tasks", "params:evaluation"],
             ["generation", "generation_records"], name="generation"),
        Node(_for_stage(collect, stage),
             ["perplexity", "multiple_choice", "multiple_choice_records", "generation", "generation_records"],
             ["evaluation_results", "evaluation_metrics", "evaluation_samples"], name="collect"),
    ])
    return pipeline(
        template,
        namespace=stage,
        inputs={"model": f"{stage}.model", **{name: name for name in SHARED}},
        outputs={name: f"{name}_{stage}" for name in STAGE_OUTPUTS},
        parameters={"params:evaluation": "params:evaluation"},
    )


def create_pipeline(**kwargs) -> Pipeline:
    tasks = Pipeline([Node(generate_offline_tasks, "params:evaluation", "evaluation_generated_tasks",
                           name="generate_offline_tasks")])
    compare = Pipeline([Node(compare_stages, ["params:evaluation", *(f"evaluation_results_{s}" for s in STAGES)],
                             ["evaluation_comparison", "evaluation_comparison_md", "evaluation_chart"],
                             name="compare_stages")])
    return Pipeline([tasks, *(stage_pipeline(s) for s in STAGES), compare], tags=["evaluation"])
