"""``ablation``: train each variant of ``ablation.variants`` the same way and compare them.

One namespaced instance of a small template per variant (namespace ``ablation.<name>``: kedro
viz shows one box per variant, ``kedro run --pipeline ablation --namespaces ablation.<name>``
runs one): ``initialise`` (the variant's fresh model and merged stage settings) -> ``train`` (the
training template's causal-LM stage node, i.e. ``run_stage``; checkpoints in
``ablation.<name>.checkpoints``) -> ``evaluate`` (``ablation.<name>.result``). A last node,
``ablation.compare_ablation``, writes the table (CSV, Markdown, JSON) and the overlaid loss curves.

Where the variant names come from: a Kedro pipeline is built before the parameters are loaded
(``create_pipeline`` receives none), yet the DAG needs one namespace per variant. As Kedro's
documentation does for dynamic pipelines, :func:`configured_variants` reads them when the pipeline
is created with the project's own config loader (``settings.CONFIG_LOADER_CLASS`` and
``CONFIG_LOADER_ARGS``, so conf/base + conf/local merge as in a run; another environment through
``KEDRO_ENV``), from the Kedro project that contains the working directory. A fixed number of
slots was the alternative; it would show empty boxes in kedro viz and cap the list. The price:
``--params`` cannot change the list (the ``initialise`` nodes stop with that message when the
run's parameters name other variants than the DAG has); the other knobs of a variant can be
changed there as usual. ``ablation`` is not part of the default ``kedro run``.
"""

from __future__ import annotations

import logging
import os
import warnings
from functools import partial, update_wrapper
from pathlib import Path

from kedro.pipeline import Node, Pipeline, pipeline

from .nodes import compare_variants, evaluate_variant, initialise_variant, train_variant
from .params import NAME_PATTERN

log = logging.getLogger(__name__)

NAMESPACE = "ablation"


def configured_variants(project_path: str | os.PathLike | None = None, env: str | None = None) -> list[str]:
    """The variant names of ``ablation.variants`` in the project's conf (see the module doc):
    ``project_path`` (default: the Kedro project around the working directory), ``env`` (default
    ``KEDRO_ENV``, else the loader's default run environment). Invalid or repeated names are left
    out here; parameter validation reports them before any node runs."""
    from kedro.framework.project import settings
    from kedro.utils import find_kedro_project

    root = Path(project_path) if project_path is not None else find_kedro_project(Path.cwd())
    if root is None or not (root / settings.CONF_SOURCE).is_dir():
        return []
    with warnings.catch_warnings():  # Kedro's loader on this OmegaConf warns at every construction
        warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated")
        loader = settings.CONFIG_LOADER_CLASS(
            conf_source=str(root / settings.CONF_SOURCE),
            env=env or os.environ.get("KEDRO_ENV"),
            **settings.CONFIG_LOADER_ARGS,
        )
        group = loader["parameters"].get(NAMESPACE)
    variants = group.get("variants") if isinstance(group, dict) else None
    names: list[str] = []
    for variant in variants if isinstance(variants, list) else []:
        name = variant.get("name") if isinstance(variant, dict) else None
        if isinstance(name, str) and NAME_PATTERN.fullmatch(name) and name not in names:
            names.append(name)
    return names


def _bound(func, **kwargs):
    """``func`` with ``kwargs`` bound, keeping its name for kedro viz."""
    return update_wrapper(partial(func, **kwargs), func)


def variant_pipeline(name: str, built: tuple[str, ...]) -> Pipeline:
    """The template of one variant under namespace ``ablation.<name>``."""
    data = ["tokenizer", "packed_train", "packed_val", "packed_mixes"]
    template = Pipeline(
        [
            Node(
                _bound(initialise_variant, variant=name, built=built),
                ["params:ablation", "params:pretrain", "params:model"],
                ["init_model", "stage_params"],
                name=f"initialise_{name}",
            ),
            Node(
                _bound(train_variant, variant=name),
                ["init_model", *data, "stage_params", "checkpoints"],
                ["model", "train_summary"],
                name=f"train_{name}",
            ),
            Node(
                _bound(evaluate_variant, variant=name),
                [
                    "model",
                    "tokenizer",
                    "packed_val",
                    "packed_mixes",
                    "stage_params",
                    "params:ablation",
                    "train_summary",
                ],
                "result",
                name=f"evaluate_{name}",
            ),
        ]
    )
    params = {p: p for p in ("params:ablation", "params:pretrain", "params:model")}
    return pipeline(
        template, namespace=f"{NAMESPACE}.{name}", inputs={d: d for d in data}, parameters=params, tags=[NAMESPACE]
    )


def create_pipeline(variants: list[str] | None = None, **kwargs) -> Pipeline:
    """One instance per variant plus the comparison; ``variants`` default: :func:`configured_variants`."""
    names = tuple(configured_variants() if variants is None else variants)
    if not names:
        log.debug("no ablation variants configured: the ablation pipeline is empty")
        return Pipeline([])
    compare = Node(
        compare_variants,
        [f"{NAMESPACE}.{n}.result" for n in names],
        ["ablation_table", "ablation_table_md", "ablation_results", "ablation_loss_curves"],
        name="compare_ablation",
        namespace=NAMESPACE,  # node ablation.compare_ablation, in the ablation box of kedro viz
        tags=[NAMESPACE],
    )
    return sum((variant_pipeline(n, names) for n in names), Pipeline([])) + Pipeline([compare])
