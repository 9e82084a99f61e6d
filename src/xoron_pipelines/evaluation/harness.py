"""Standard benchmarks through lm-evaluation-harness (``lm_eval``), the field's tool.

One adapter serves every model: a stage model (our ``XoronForCausalLM``, a ``PreTrainedModel``
whose ``forward(input_ids)`` returns ``.logits``) and the exported Hugging Face directory
(:func:`load_export_dir`: native transformers classes) are both wrapped as an ``lm_eval``
``HFLM`` from the model *instance* and its tokenizer (no hub download), and scored by
``lm_eval.simple_evaluate``.

Which tasks run is decided before any scoring (:func:`plan`):

* ``humaneval`` is always skipped: lm_eval executes generated code in-process
  (``HF_ALLOW_CODE_EVAL=1``), and generated code only runs in our sandbox
  (:mod:`xoron_pipelines.sandbox`); the evaluation pipeline's own humaneval-format program task
  covers code, in the sandbox.
* a task given local files (``datasets: {<lm_eval task>: {train/validation/test: path}}``) runs on
  them: a task YAML that ``include:``\\s lm_eval's own and points ``dataset_path: json`` at them;
* offline (``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE`` set) a task whose dataset is in neither
  the datasets cache nor the hub cache is skipped ``offline, no local copy``;
* online, a task whose dataset cannot be loaded is skipped with the loader's error.

Every skip is one log line and one entry of the results' ``skipped``. Figures carry lm_eval's
``*_stderr`` and a normal 95% interval (value +- 1.96 x stderr).

Perplexity convention (``loglikelihood_rolling``): lm_eval scores a text as ``bos + ids`` in
windows of ``max_length`` model inputs, each predicting ``max_length`` new tokens (the first
from bos); ``bits_per_byte = -sum(log p) / (ln 2 * UTF-8 bytes of the text)``.
:func:`xoron_pipelines.evaluation.perplexity.text_pieces` uses the same windows, so our figures
and the harness's agree on the same text (tests/evaluation/test_harness.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Z95 = 1.96
HUMANEVAL_REASON = (
    "lm_eval runs generated code in-process; generated code only runs in our sandbox "
    "(the evaluation pipeline's humaneval-format program task scores code there)"
)
OFFLINE_REASON = "offline, no local copy"
HELDOUT_TASK = "xoron_heldout_text"  # the local perplexity task shipped with the project (packed_val text)


@dataclass(frozen=True)
class Standard:
    """A standard benchmark: the lm_eval task / group names it runs, its hub dataset and the
    folder of ``lm_eval/tasks`` that defines them."""

    tasks: tuple[str, ...]
    dataset: str
    folder: str


STANDARD: dict[str, Standard] = {
    "hellaswag": Standard(("hellaswag",), "Rowan/hellaswag", "hellaswag"),
    "mmlu": Standard(("mmlu",), "cais/mmlu", "mmlu"),
    "truthfulqa": Standard(("truthfulqa_mc1", "truthfulqa_mc2"), "truthfulqa/truthful_qa", "truthfulqa"),
    "gsm8k": Standard(("gsm8k",), "openai/gsm8k", "gsm8k"),
    "humaneval": Standard(("humaneval",), "openai/openai_humaneval", "humaneval"),
    "wikitext": Standard(("wikitext",), "EleutherAI/wikitext_document_level", "wikitext"),
    "arc": Standard(("arc_easy", "arc_challenge"), "allenai/ai2_arc", "arc"),
}
FOLDER = {task: std.folder for std in STANDARD.values() for task in std.tasks}
# lm_eval leaf tasks that accept local files (one dataset each; mmlu is a group of 57 subjects)
LOCAL_FILE_TASKS = ("hellaswag", "truthfulqa_mc1", "truthfulqa_mc2", "gsm8k", "wikitext", "arc_easy", "arc_challenge")
SPLITS = {"train": "training_split", "validation": "validation_split", "test": "test_split"}


def offline() -> bool:
    """Whether the Hugging Face libraries are told not to reach the network."""
    return any(
        os.environ.get(k, "").strip().lower() in {"1", "true", "yes", "on"}
        for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def _cache_dirs() -> tuple[Path, Path]:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    hub_cache = Path(os.environ.get("HF_HUB_CACHE", os.environ.get("HUGGINGFACE_HUB_CACHE", home / "hub")))
    return datasets_cache, hub_cache


def cached(dataset: str) -> bool:
    """Whether hub dataset ``owner/name`` has a local copy (datasets cache or hub cache)."""
    datasets_cache, hub_cache = _cache_dirs()
    owner_name = dataset.split("/")
    return (datasets_cache / "___".join(owner_name)).is_dir() or (
        hub_cache / ("datasets--" + "--".join(owner_name))
    ).is_dir()


def plan(names: Sequence[str], local: Mapping[str, Mapping[str, str]]) -> tuple[list[str], dict[str, str]]:
    """``(lm_eval task names to run, {skipped name: reason})`` for the standard benchmarks
    ``names``; ``local`` maps lm_eval leaf tasks to their local ``{split: path}`` files."""
    run: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        std = STANDARD[name]
        if name == "humaneval":
            skipped[name] = HUMANEVAL_REASON
            continue
        for task in std.tasks:
            if task in local or not offline() or cached(std.dataset):
                run.append(task)
            else:
                skipped[task] = f"{OFFLINE_REASON} of {std.dataset}"
    return run, skipped


def _lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _lm_eval_task_yaml(task: str) -> Path:
    return _lm_eval_tasks_dir() / FOLDER[task] / f"{task}.yaml"


def write_local_task(folder: Path, task: str, files: Mapping[str, str]) -> Path:
    """A task YAML in ``folder`` that is lm_eval's ``task`` reading ``files`` (``{split: path}``,
    JSON lines in the hub dataset's own columns); splits without a file are unset."""
    missing = [f"{split}: {path}" for split, path in files.items() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"evaluation.harness.datasets.{task}: no such file(s) {missing}")
    config: dict[str, Any] = {
        "include": str(_lm_eval_task_yaml(task)),
        "task": task,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {s: str(Path(p).resolve()) for s, p in files.items()}},
        **{key: (split if split in files else None) for split, key in SPLITS.items()},
        "fewshot_split": "train" if "train" in files else None,
    }
    path = folder / f"{task}.yaml"
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")  # JSON is YAML
    return path


def write_text_task(folder: Path, texts: Sequence[str], name: str = HELDOUT_TASK) -> Path:
    """A ``loglikelihood_rolling`` task over ``texts`` (like wikitext's: word / byte perplexity,
    bits per byte), its JSONL written beside it."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "output_type": "loglikelihood_rolling",
        "test_split": "test",
        "doc_to_text": "",
        "doc_to_target": "text",  # the column itself: a template would be literal_eval-ed when it looks like a list
        "metric_list": [
            {"metric": m, "aggregation": a, "higher_is_better": False}
            for m, a in (
                ("word_perplexity", "weighted_perplexity"),
                ("byte_perplexity", "weighted_perplexity"),
                ("bits_per_byte", "bits_per_byte"),
            )
        ],
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


def packed_texts(packed_val, tokenizer, max_rows: int | None) -> list[str]:
    """The documents of the first ``max_rows`` rows of a packed split (``ShardSet``) as text: each
    row's real ids split at its special tokens (bos / eos / pad), each piece decoded."""
    from xoron_pipelines.evaluation.perplexity import iter_packed_rows

    if not packed_val.files:
        return []
    special = set(tokenizer.all_special_ids)
    texts: list[str] = []
    for ids, length in iter_packed_rows(packed_val, max_rows):
        piece: list[int] = []
        for t in [*ids[:length], None]:
            if t is None or t in special:
                if text := tokenizer.decode(piece).strip():
                    texts.append(text)
                piece = []
            else:
                piece.append(t)
    return texts


def _adapter_class():
    from lm_eval.models.huggingface import HFLM

    from xoron_pipelines.model.model import XoronPreTrainedModel

    class XoronHFLM(HFLM):
        """``HFLM`` with a default generation budget of ``max_gen_toks`` tokens, whose generation
        also drives our own models' ``generate`` (it takes ``max_new_tokens`` and no stopping
        criteria: lm_eval cuts each text at the task's stop sequences itself)."""

        def __init__(self, *args, max_gen_toks: int = 256, **kwargs):
            super().__init__(*args, **kwargs)
            self._xoron_max_gen_toks = max_gen_toks

        @property
        def max_gen_toks(self) -> int:
            return self._xoron_max_gen_toks

        def _model_generate(self, context, max_length, stop, **kwargs):
            if not isinstance(self.model, XoronPreTrainedModel):
                return super()._model_generate(context, max_length, stop, **kwargs)
            sampling = bool(kwargs.get("do_sample"))
            keep = ("attention_mask", "top_p", "top_k", *(("temperature",) if sampling else ()))
            return self.model.generate(
                context,
                max_new_tokens=max_length - context.shape[1],
                do_sample=sampling,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                **{k: kwargs[k] for k in keep if kwargs.get(k) is not None},
            )

    return XoronHFLM


def make_lm(model, tokenizer, batch_size: int, max_length: int | None = None, max_gen_toks: int = 256):
    """An lm_eval ``HFLM`` around a model instance (eval mode, on its own device).

    ``add_bos_token=False``: the exported tokenizer adds BOS itself (as training rows start), the
    training tokenizer does not; lm_eval puts its own prefix token (BOS) before rolling windows and
    empty contexts, so without this the export would score BOS as a predicted first token and differ
    from the stage model it was exported from."""
    from xoron_pipelines.evaluation.lm import model_device

    max_length = max_length or int(model.config.max_position_embeddings)
    return _adapter_class()(
        pretrained=model.eval(),
        tokenizer=tokenizer,
        backend="causal",
        batch_size=batch_size,
        max_length=max_length,
        device=str(model_device(model)),
        max_gen_toks=max_gen_toks,
        add_bos_token=False,
    )


def summarize(results: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """lm_eval's ``results`` -> ``{task: {metric: {value, stderr, ci95_low, ci95_high, n}}}``
    (filters other than ``none`` keep their name: ``exact_match,strict-match`` -> ``exact_match_strict-match``)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    n_samples = results.get("n-samples", {})
    for task, figures in results["results"].items():
        n = n_samples.get(task, {}).get("effective")
        metrics: dict[str, dict[str, float | None]] = {}
        for key, value in figures.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filt = key.split(",", 1)
            stderr = figures.get(f"{metric}_stderr,{filt}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
            name = metric if filt == "none" else f"{metric}_{filt}"
            metrics[name] = {
                "value": float(value),
                "stderr": stderr,
                "ci95_low": None if stderr is None else float(value) - Z95 * stderr,
                "ci95_high": None if stderr is None else float(value) + Z95 * stderr,
                "n": None if n is None else float(n),
            }
        out[task] = metrics
    return out


def flat_metrics(tasks: Mapping[str, Mapping[str, Mapping[str, float | None]]]) -> dict[str, float]:
    """``harness/<task>/<metric>`` (and ``..._stderr``, ``..._ci95_low`` / ``_high``) -> value, finite only."""
    out: dict[str, float] = {}
    for task, metrics in tasks.items():
        for metric, fig in metrics.items():
            for suffix, key in (
                ("", "value"),
                ("_stderr", "stderr"),
                ("_ci95_low", "ci95_low"),
                ("_ci95_high", "ci95_high"),
            ):
                v = fig.get(key)
                if v is not None and math.isfinite(v):
                    out[f"harness/{task}/{metric}{suffix}"] = float(v)
    return out


def evaluate(
    model,
    tokenizer,
    *,
    benchmarks: Sequence[str],
    local: Mapping[str, Mapping[str, str]],
    texts: Sequence[str],
    workdir: Path,
    include_path: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    max_gen_toks: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the harness on ``model``: the runnable ``benchmarks`` (see :func:`plan`), every task
    of ``include_path`` (a directory of custom task YAMLs) and, when ``texts`` is not empty, the
    :data:`HELDOUT_TASK` perplexity task over them. Returns ``{"tasks": summarize(...),
    "n_shot": {task: few-shot examples}, "skipped": {name: reason}}``; a task that fails to load is skipped with its error."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    to_run, skipped = plan(benchmarks, local)
    for name, reason in skipped.items():
        log.info("harness: skipped %s: %s", name, reason)
    workdir.mkdir(parents=True, exist_ok=True)
    for task, files in local.items():
        write_local_task(workdir, task, files)
    names = list(to_run)
    if texts:
        write_text_task(workdir, texts)
        names.append(HELDOUT_TASK)
    custom: list[str] = []
    if include_path:
        folder = Path(include_path)
        if not folder.is_dir():
            raise FileNotFoundError(f"evaluation.harness.include_path: {folder} is not a directory")
        custom = [
            t for t in TaskManager(include_defaults=False, include_path=str(folder)).all_subtasks if t not in names
        ]
        if not custom:
            raise ValueError(f"evaluation.harness.include_path: {folder} holds no lm_eval task YAML")
        names += custom
    # only the folders of the built-in tasks that run are indexed (all ~10k task files take seconds)
    folders = sorted({str(_lm_eval_tasks_dir() / FOLDER[t]) for t in to_run if t not in local})
    extra = [include_path] if include_path else []
    manager = TaskManager(include_defaults=False, include_path=[*folders, str(workdir), *extra])
    lm = make_lm(model, tokenizer, batch_size, max_length, max_gen_toks)
    tasks: dict[str, Any] = {}
    shots: dict[str, int] = {}
    for name in names:
        try:
            raw = lm_eval.simple_evaluate(
                model=lm,
                tasks=[name],
                task_manager=manager,
                limit=limit,
                num_fewshot=None if name == HELDOUT_TASK else num_fewshot,
                log_samples=False,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                bootstrap_iters=1000,
            )
        except Exception as err:  # a dataset that cannot be reached or read: say so, go on
            if name == HELDOUT_TASK or name in local:
                raise
            skipped[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            log.warning("harness: skipped %s: %s", name, skipped[name])
            continue
        tasks.update(summarize(raw))
        shots.update({t: int(n) for t, n in raw.get("n-shot", {}).items() if t in raw["results"]})
    for task, metrics in tasks.items():
        log.info("harness %s: %s", task, {m: round(f["value"], 4) for m, f in metrics.items()})
    return {"tasks": tasks, "n_shot": shots, "skipped": skipped}


def load_export_dir(path: str | os.PathLike, device: str = "cpu"):
    """``(model, tokenizer)`` of an exported Hugging Face directory (``export/hf.py``), loaded
    with the Auto classes (native transformers classes; our own ``xoron`` config otherwise)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import xoron_pipelines.model  # noqa: F401  registers the xoron config for non-native exports

    model = AutoModelForCausalLM.from_pretrained(path).to(device).float().eval()
    return model, AutoTokenizer.from_pretrained(path)
