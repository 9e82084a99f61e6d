"""Nodes of the ``evaluation`` pipeline.

``generate_offline_tasks`` and ``initialise_untrained`` run once; ``perplexity`` /
``multiple_choice`` / ``generation`` / ``collect`` run once per training stage (namespaced
``<stage>.``, input ``<stage>.model``) and once for the untrained starting model (namespace
``untrained``);
``collect`` also logs the stage's metrics as ``eval/<metric>`` into the stage's own training
run (``mlflow_run_id`` of ``<stage>.train_summary``) when that run is in the tracking store;
``compare_stages`` builds the cross-stage table and chart.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from xoron_pipelines import tracking
from xoron_pipelines.data import sources
from xoron_pipelines.device import resolve_device
from xoron_pipelines.evaluation import generation_tasks as gen
from xoron_pipelines.evaluation import harness, offline_tasks, perplexity, preference, report
from xoron_pipelines.evaluation import multiple_choice as mc
from xoron_pipelines.evaluation import task_files as tf
from xoron_pipelines.evaluation.lm import encode_pair, generate_texts, loglikelihoods
from xoron_pipelines.pipelines.data_processing.params import StdlibCorpus
from xoron_pipelines.pipelines.training.nodes import initialise_model
from xoron_pipelines.sandbox import SandboxLimits, isolation_mode
from xoron_pipelines.tokens import CHAT_ROLES, render_chat
from xoron_pipelines.training.schema import StageParams

from .params import Params

log = logging.getLogger(__name__)

GENERATED_DIR = "data/01_raw/eval/generated"  # catalog evaluation_generated_tasks


def _limits(p: Params) -> SandboxLimits:
    return SandboxLimits(**p.sandbox.model_dump())


def generate_offline_tasks(params: dict[str, Any], stdlib_params: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The generated task files (one partition per task, plus ``heldout_text``); ``stdlib_params``
    is ``data_processing.stdlib_corpus``, which says which stdlib files training reads (those are
    left out of ``docstring_continuation``)."""
    p = Params.model_validate(params)
    corpus = StdlibCorpus.model_validate(stdlib_params or {})
    tasks = offline_tasks.build(p.offline_tasks.seed, p.offline_tasks.counts(), corpus)
    log.info("generated offline task files: %s", {k: len(v) for k, v in tasks.items()})
    return tasks


def initialise_untrained(model_params: dict[str, Any], first_stage_params: dict[str, Any]):
    """The model training starts from: pretrain's ``initialise`` node on ``params:model``, seeded
    with the first pretrain stage's ``train.seed`` (same weights), evaluated as the baseline."""
    return initialise_model(model_params, first_stage_params)


def _partition(generated: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    part = generated.get(name)
    if part is None:
        raise tf.TaskFileError(f"{GENERATED_DIR}/{name}.jsonl: no generated task file (offline_tasks.{name} is 0?)")
    return part() if callable(part) else part


def task_rows(name: str, p: Params, generated: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The validated rows of benchmark ``name``: its configured file, the registry's
    ``<name>.jsonl``, or the generated file (in that order)."""
    fmt, limit = p.task_format(name), p.limit(name)
    path = p.tasks[name].path or (f"{p.evals_registry_path}/{name}.jsonl" if p.evals_registry_path else None)
    if path is not None:
        return tf.load_task(path, fmt, limit)
    return tf.validate_rows(_partition(generated, name)[:limit], fmt, f"{GENERATED_DIR}/{name}.jsonl")


def _prepare(model, p: Params):
    return model.to(resolve_device(p.device, "evaluation.device")).float().eval()


def _max_length(model, p_len: int | None) -> int:
    return p_len or int(model.config.max_position_embeddings)


# --------------------------------------------------------------------------- perplexity


def evaluate_perplexity(
    model, packed_val, tokenizer, generated: Mapping[str, Any], params: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Perplexity and bits-per-byte on the held-out packed split and on the text sources, with
    their per-sequence ``items`` (nll, tokens, bytes) and the ``chance`` figures of a uniform
    distribution over the model's vocabulary."""
    p = Params.model_validate(params)
    pp = p.perplexity
    model = _prepare(model, p)
    max_len = _max_length(model, pp.max_length)
    pad = tokenizer.pad_token_id or 0
    out: dict[str, dict[str, float]] = {}

    def run(name: str, pieces) -> None:
        result = perplexity.score(model, pieces, p.eval_batch_size, pad, p.progress, f"perplexity {name}")
        out[name] = {
            **result.as_dict(),
            "chance": result.uniform_chance(int(model.config.vocab_size)),
            "items": result.items,
        }
        log.info("perplexity %s: %.3f (%.4f bits/byte)", name, out[name]["perplexity"], out[name]["bits_per_byte"])

    if pp.packed_val:
        run("packed_val", perplexity.packed_pieces(perplexity.iter_packed_rows(packed_val, pp.max_rows), tokenizer))
    texts: dict[str, list[str]] = {}
    if pp.heldout_text:
        texts["heldout_text"] = [r["text"] for r in _partition(generated, "heldout_text")[: pp.max_rows]]
    for source in pp.text_sources:
        texts[source.name] = _source_texts(source, pp)
    for name, values in texts.items():
        run(name, perplexity.text_pieces(values, tokenizer, max_len))
    return out


def _source_texts(source, pp) -> list[str]:
    good, bad = [], 0
    for record in sources.iter_records(source, pp.max_record_bytes, pp.stdlib_corpus):
        if pp.max_rows is not None and len(good) >= pp.max_rows:
            break
        if record.text:
            good.append(record.text)
        else:
            bad += 1
    if bad:
        log.warning("text source %s: %d unreadable records skipped", source.name, bad)
    return good


# --------------------------------------------------------------------------- multiple choice


def _mc_items(name: str, fmt: str, rows: list[dict[str, Any]]) -> dict[str, list[mc.MCItem]]:
    if fmt == "hellaswag":
        return {name: tf.hellaswag_items(rows)}
    if fmt == "mmlu":
        return {name: tf.mmlu_items(rows)}
    mc1, mc2 = tf.truthfulqa_items(rows)
    return {f"{name}_mc1": mc1, f"{name}_mc2": mc2}


def _loglikelihood_fn(model, tokenizer, p: Params) -> Callable[[list[tuple[str, str]]], list[float]]:
    """``[(context, continuation)] -> [ll]``, each distinct pair scored once per node (the mc1 and
    mc2 items of a truthfulqa-format task share their contexts and choices)."""
    bos = tokenizer.bos_token_id if p.multiple_choice.add_bos else None
    pad = tokenizer.pad_token_id or 0
    cache: dict[tuple[str, str], float] = {}

    def fn(requests: list[tuple[str, str]]) -> list[float]:
        todo = list(dict.fromkeys(r for r in requests if r not in cache))
        encoded = [encode_pair(tokenizer, ctx, cont, bos) for ctx, cont in todo]
        scored = loglikelihoods(model, encoded, p.eval_batch_size, _max_length(model, None), pad, p.progress)
        cache.update(zip(todo, (ll for ll, _ in scored)))
        return [cache[r] for r in requests]

    return fn


def evaluate_multiple_choice(
    model, tokenizer, generated: Mapping[str, Any], params: dict[str, Any]
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """acc / acc_norm (and mc2 for the truthfulqa format) of every multiple-choice task in ``evals``."""
    p = Params.model_validate(params)
    model = _prepare(model, p)
    ll = _loglikelihood_fn(model, tokenizer, p)
    summary: dict[str, dict[str, float]] = {}
    records: list[dict[str, Any]] = []
    for name in p.evals:
        fmt = p.task_format(name)
        if fmt not in tf.MC_FORMATS:
            continue
        for task, items in _mc_items(name, fmt, task_rows(name, p, generated)).items():
            summary[task], recs = mc.evaluate(items, ll, p.multiple_choice.acc_norm_unit)
            records += [{"task": task, **r} for r in recs]
            log.info("%s: %s", task, summary[task])
    return summary, records


# --------------------------------------------------------------------------- generation


def _gsm8k(model, tokenizer, rows, p: Params, chat: bool) -> tuple[dict[str, float], list[dict]]:
    close = CHAT_ROLES["assistant"][1]
    if chat:
        prompts = [render_chat([{"role": "user", "content": r["question"]}], add_generation_prompt=True) for r in rows]
        stops = (close, CHAT_ROLES["user"][0])
    else:
        prompts = [tf.gsm8k_prompt(r) for r in rows]
        stops = ("\n\nQuestion:", "Question:")
    outputs = generate_texts(
        model,
        tokenizer,
        prompts,
        max_new_tokens=p.gsm8k.max_new_tokens,
        batch_size=p.eval_batch_size,
        seed=p.seed,
        progress=p.progress,
    )
    records = []
    for row, raw in zip(rows, outputs):
        answer = gen.truncate_at(raw, stops)
        records.append(
            {
                "question": row["question"],
                "completion": answer,
                "prediction": gen.extract_final_number(answer),
                "target": gen.extract_final_number(row["answer"]),
                "exact_match": gen.gsm8k_exact_match(answer, row["answer"]),
            }
        )
    n = len(records)
    mean = sum(r["exact_match"] for r in records) / n if n else math.nan
    return {"exact_match": mean, "n": float(n), "chance": 0.0}, records


def _humaneval(model, tokenizer, rows, p: Params) -> tuple[dict[str, float], list[dict]]:
    h = p.humaneval
    limits = _limits(p)
    isolation_mode(limits)  # refuse (SandboxUnavailableError) before generating anything
    prompts = [r["prompt"] for r in rows for _ in range(h.n_samples)]
    outputs = generate_texts(
        model,
        tokenizer,
        prompts,
        max_new_tokens=h.max_new_tokens,
        batch_size=p.eval_batch_size,
        temperature=h.temperature,
        top_p=h.top_p,
        seed=p.seed,
        progress=p.progress,
    )
    records, summary = [], {f"pass_at_{k}": 0.0 for k in h.ks}
    for i, row in enumerate(rows):
        completions = [gen.truncate_at(t, gen.HUMANEVAL_STOP) for t in outputs[i * h.n_samples : (i + 1) * h.n_samples]]
        results = [gen.check_completion(row, c, limits) for c in completions]
        correct = sum(r.ok for r in results)
        scores = {f"pass_at_{k}": gen.pass_at_k(h.n_samples, correct, k) for k in h.ks}
        for key, value in scores.items():
            summary[key] += value / len(rows)
        records.append(
            {
                "task_id": row["task_id"],
                "completions": completions,
                "correct": correct,
                "errors": [r.error for r in results],
                **scores,
            }
        )
    summary["n"] = float(len(rows))
    summary["chance"] = 0.0
    return summary, records


def evaluate_generation(
    model, tokenizer, generated: Mapping[str, Any], params: dict[str, Any], stage: str
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Exact match (gsm8k format) and pass@k (humaneval format) of every generation task in ``evals``."""
    p = Params.model_validate(params)
    model = _prepare(model, p)
    summary: dict[str, dict[str, float]] = {}
    records: list[dict[str, Any]] = []
    for name in p.evals:
        fmt = p.task_format(name)
        if fmt not in tf.GENERATION_FORMATS:
            continue
        rows = task_rows(name, p, generated)
        if fmt == "gsm8k":
            summary[name], recs = _gsm8k(model, tokenizer, rows, p, chat=stage in p.chat_prompts)
        else:
            summary[name], recs = _humaneval(model, tokenizer, rows, p)
        records += [{"task": name, **r} for r in recs]
        log.info("%s: %s", name, summary[name])
    return summary, records


# --------------------------------------------------------------------------- lm-evaluation-harness


def _run_harness(model, tokenizer, texts: list[str], p: Params) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    h = p.harness
    with tempfile.TemporaryDirectory(prefix="xoron-harness-") as tmp:
        out = harness.evaluate(
            model,
            tokenizer,
            benchmarks=h.tasks,
            local={task: d.files() for task, d in h.datasets.items()},
            texts=texts,
            workdir=Path(tmp),
            include_path=h.include_path,
            limit=h.limit,
            num_fewshot=h.num_fewshot,
            batch_size=h.batch_size,
            max_length=h.max_length,
            max_gen_toks=h.max_gen_toks,
            seed=p.seed,
        )
    return out, {k: {"value": v, "step": 0} for k, v in harness.flat_metrics(out["tasks"]).items()}


def evaluate_harness(
    model, packed_val, tokenizer, params: dict[str, Any], stage: str
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Standard tasks through lm-evaluation-harness (:mod:`xoron_pipelines.evaluation.harness`)
    plus the held-out text perplexity task (the documents of the first ``perplexity.max_rows``
    rows of ``packed_val``): ``(results JSON with the skipped tasks and why, MLflow metrics
    harness/<task>/<metric>[_stderr|_ci95_low|_ci95_high])``."""
    p = Params.model_validate(params)
    h = p.harness
    if not h.enabled:
        return {"stage": stage, "enabled": False, "tasks": {}, "n_shot": {}, "skipped": {}}, {}
    texts = harness.packed_texts(packed_val, tokenizer, p.perplexity.max_rows) if h.heldout_text else []
    out, metrics = _run_harness(_prepare(model, p), tokenizer, texts, p)
    return {"stage": stage, "enabled": True, **out, "config": h.model_dump()}, metrics


def evaluate_export_harness(
    manifest: Mapping[str, Any], packed_val, params: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The same harness run on the exported Hugging Face directory (``manifest.formats.hf.path``,
    loaded with the transformers Auto classes and its own tokenizer), as ``evaluation_harness_export``:
    its figures match the source stage's ``evaluation_harness_<stage>`` (same tasks, same text)."""
    p = Params.model_validate(params)
    h = p.harness
    base = {"stage": "export", "source": manifest.get("source"), "enabled": h.enabled}
    hf = manifest.get("formats", {}).get("hf") or {}
    if not h.enabled:
        return {**base, "tasks": {}, "n_shot": {}, "skipped": {}}, {}
    if not hf.get("path"):
        reason = "no hf/ directory exported (hf not in export.formats)"
        log.info("harness on the export: skipped: %s", reason)
        return {**base, "tasks": {}, "n_shot": {}, "skipped": {"export": reason}}, {}
    model, tokenizer = harness.load_export_dir(hf["path"], str(resolve_device(p.device, "evaluation.device")))
    texts = harness.packed_texts(packed_val, tokenizer, p.perplexity.max_rows) if h.heldout_text else []
    out, metrics = _run_harness(model, tokenizer, texts, p)
    return {**base, "path": hf["path"], **out, "config": h.model_dump()}, metrics


# --------------------------------------------------------------------------- results


def collect(
    ppl: dict,
    mc_summary: dict,
    mc_records: list,
    gen_summary: dict,
    gen_records: list,
    train_summary: Mapping[str, Any] | None = None,
    *,
    stage: str,
) -> tuple[dict[str, Any], dict[str, dict[str, float]], list[dict[str, Any]]]:
    """One stage's results: a JSON report (perplexity totals, task summaries, and ``figures``:
    every figure with n, 95% interval, chance and per-item scores, see :func:`report.figures`), its
    MLflow metrics (value and interval, for the ``kedro run`` run) and the per-item samples. The
    metrics also go to the stage's training run (see :func:`log_to_training_run`); the untrained
    model has no training summary."""
    tasks = {**mc_summary, **gen_summary}
    figures = report.figures(tasks, mc_records + gen_records, ppl)
    totals = {name: {k: v for k, v in r.items() if k not in ("items", "chance")} for name, r in ppl.items()}
    results = {"stage": stage, "perplexity": totals, "tasks": tasks, "figures": figures}
    values = {k: v for k, v in stage_metrics(results).items() if not math.isnan(v)}
    if stage != report.UNTRAINED:
        log_to_training_run(values, train_summary, stage)
    metrics = {k: {"value": v, "step": 0} for k, v in values.items()}
    return results, metrics, [{"stage": stage, **r} for r in mc_records + gen_records]


def log_to_training_run(metrics: Mapping[str, float], train_summary: Mapping[str, Any] | None, stage: str) -> bool:
    """Log ``metrics`` as ``eval/<name>`` (step 0) into the run whose id is the summary's
    ``mlflow_run_id``, so a stage's training run carries its evaluation. A summary without a run
    id, or an id unknown to the current tracking store (a model trained elsewhere), only logs a
    warning. Returns whether the metrics were logged."""
    run_id = (train_summary or {}).get("mlflow_run_id")
    if not run_id:
        log.warning(
            "evaluation of %s: its training summary has no MLflow run id; metrics are logged to the kedro run only",
            stage,
        )
        return False
    try:
        count = tracking.log_metrics_to_run(run_id, {f"eval/{k}": v for k, v in metrics.items()}, step=0)
    except tracking.RunNotFound as err:
        log.warning(
            "evaluation of %s: training run %s is not in the tracking store (%s); "
            "metrics are logged to the kedro run only",
            stage,
            run_id,
            err.error_code,
        )
        return False
    log.info("evaluation of %s: %d metrics logged to training run %s", stage, count, run_id)
    return True


def stage_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{"task.metric": value}`` plus ``"task.metric_ci_lo"`` / ``_ci_hi`` (the 95% interval)."""
    values = report.flatten({**{f"ppl_{k}": v for k, v in results["perplexity"].items()}, **results["tasks"]})
    for name, f in results.get("figures", {}).items():
        values[f"{name}_ci_lo"], values[f"{name}_ci_hi"] = f["lo"], f["hi"]
    return values


def plot_comparison(table):
    """The comparison chart as a PNG figure (``evaluation_chart_png``: an artefact of the run's
    MLflow run, beside the CSV table)."""
    return report.comparison_png_figure(table)


def compare_stages(params: dict[str, Any], untrained: dict[str, Any], *results: dict[str, Any]):
    """Comparison table (CSV + markdown) and plotly chart: the untrained starting model, then the
    stages of ``compare_stages``, each figure with its interval and the paired change from the
    column before."""
    p = Params.model_validate(params)
    by_column = {r["stage"]: r["figures"] for r in (untrained, *results)}
    columns = [report.UNTRAINED, *(s for s in p.compare_stages if s in by_column)]
    table = report.comparison_table(by_column, columns, p.seed)
    return table, report.to_markdown(table, columns), report.comparison_figure(table, columns)


# --------------------------------------------------------------------------- preference


def evaluate_preference(
    policy,
    reference,
    tokenizer,
    synth_raw: Mapping[str, Any],
    stage_params: Any,
    params: dict[str, Any],
    train_summary: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Held-out preference accuracy of the preference stage's model beside its reference (the
    stage's starting model, ``tools.model``) on the pairs the stage held out
    (:mod:`xoron_pipelines.evaluation.preference`); also logged as ``eval/preference_accuracy.*``
    into the preference stage's training run. A disabled stage gives ``{"skipped": reason}``."""
    p, sp = Params.model_validate(params), StageParams.model_validate(stage_params)
    if not sp.enabled:
        return {"stage": "preference", "skipped": "finetune.stages.preference.enabled is false"}
    device = resolve_device(p.device, "evaluation.device")
    policy, reference = (m.to(device).float().eval() for m in (policy, reference))
    max_len = sp.max_seq_len or int(policy.config.max_position_embeddings)
    pairs = preference.held_out_pairs(sp, tokenizer, synth_raw, max_len)
    result = preference.preference_accuracy(
        policy, reference, pairs, float(sp.beta), p.eval_batch_size, tokenizer.pad_token_id or 0
    )
    result = {"stage": "preference", **result, "rows": preference.comparison_rows(result)}
    for row in result["rows"]:
        log.info(
            "%s on %d held-out pairs: policy %.3f [%.3f, %.3f], reference margin %.3f [%.3f, %.3f]%s",
            row["metric"],
            row["n"],
            row["policy"],
            *row["policy_ci"],
            row["reference_margin"],
            *row["reference_ci"],
            "" if row["separated"] else " (intervals overlap)",
        )
    log_to_training_run(preference.flat_metrics(result), train_summary, "preference")
    return result
