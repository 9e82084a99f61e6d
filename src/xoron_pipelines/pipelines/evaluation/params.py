"""Schema of ``conf/base/parameters_evaluation.yml`` (top-level key ``evaluation``).

The llm720 ``eval_config`` keys (seed 002) are here with the same meaning: ``evals`` (which
evaluations to run: here the offline tasks of :data:`EVAL_NAMES`), ``eval_batch_size``,
``evals_registry_path`` (here: a local directory of ``<name>.jsonl`` task files instead of an
OpenAI Evals registry, so no API key is needed).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from xoron_pipelines.device import DeviceSpec
from xoron_pipelines.pipelines.data_processing.params import Source, StdlibCorpus
from xoron_pipelines.training.schema import STAGE_ORDER as STAGES  # one evaluation per stage model
from xoron_pipelines.training.schema import StageName as Stage
from xoron_pipelines.validation import Seed, StrictModel

# The offline tasks (evaluation/offline_tasks.py), named for what they measure, and the row
# format of their task files (the public sets' formats, evaluation/task_files.py).
DEFAULT_FORMATS = {
    "docstring_continuation": "hellaswag",
    "program_output": "mmlu",
    "arithmetic_word_problems": "gsm8k",
    "unanswerable_refusal": "truthfulqa",
    "function_synthesis": "humaneval",
}
EVAL_NAMES = tuple(DEFAULT_FORMATS)
EvalName = Literal[
    "docstring_continuation", "program_output", "arithmetic_word_problems", "unanswerable_refusal", "function_synthesis"
]
TaskFormat = Literal["hellaswag", "mmlu", "truthfulqa", "gsm8k", "humaneval"]


class TaskFile(StrictModel):
    """Where one task's rows come from. ``path: null`` -> ``<evals_registry_path>/<name>.jsonl``
    when a registry is set, else the generated offline file."""

    path: str | None = None
    format: TaskFormat | None = None  # row format; null = the task's own (DEFAULT_FORMATS)
    max_samples: int | None = Field(default=None, ge=1, description="overrides evaluation.max_samples")


def _default_tasks() -> dict[str, TaskFile]:
    return {name: TaskFile() for name in EVAL_NAMES}


class OfflineTasks(StrictModel):
    """Size of the generated task files (data/01_raw/eval/generated/<name>.jsonl); 0 disables one.
    The tasks are held out from training by construction (own templates, stdlib files the training
    corpus does not read), whatever the seed."""

    seed: Seed = 2024
    docstring_continuation: int = Field(default=200, ge=0)
    program_output: int = Field(default=200, ge=0)
    arithmetic_word_problems: int = Field(default=50, ge=0)
    unanswerable_refusal: int = Field(default=200, ge=0)
    function_synthesis: int = Field(default=30, ge=0)
    heldout_text: int = Field(default=50, ge=0)

    def counts(self) -> dict[str, int]:
        return self.model_dump(exclude={"seed"})


class Perplexity(StrictModel):
    packed_val: bool = True  # score the held-out packed split
    heldout_text: bool = True  # score the generated held-out conversations
    text_sources: list[Source] = Field(default_factory=list)  # more texts (data_processing source entries)
    max_rows: int | None = Field(default=64, ge=1)  # packed rows / texts per source (null = all)
    max_length: int | None = Field(default=None, ge=2)  # window length; null = model max positions
    max_record_bytes: int = Field(default=1_000_000, ge=1)
    stdlib_corpus: StdlibCorpus = Field(default_factory=StdlibCorpus)


class MultipleChoice(StrictModel):
    acc_norm_unit: Literal["chars", "bytes"] = "chars"  # lm-evaluation-harness divides by characters
    add_bos: bool = True  # contexts start with bos, like the packed documents


class GSM8K(StrictModel):
    max_new_tokens: int = Field(default=128, ge=1)


class HumanEval(StrictModel):
    n_samples: int = Field(default=1, ge=1)  # completions per problem (n of pass@k)
    ks: list[int] = Field(default_factory=lambda: [1], min_length=1)
    temperature: float = Field(default=0.0, ge=0.0)  # 0 = greedy
    top_p: float | None = Field(default=0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=96, ge=1)

    @model_validator(mode="after")
    def _check(self) -> HumanEval:
        bad = [k for k in self.ks if not 1 <= k <= self.n_samples]
        if bad:
            raise ValueError(f"ks {bad} must be between 1 and n_samples ({self.n_samples})")
        if self.n_samples > 1 and self.temperature == 0:
            raise ValueError("n_samples > 1 needs temperature > 0 (greedy samples are all identical)")
        return self


class Sandbox(StrictModel):
    """Limits of the sandbox generated code runs in (:class:`xoron_pipelines.sandbox.SandboxLimits`)."""

    timeout_s: float = Field(default=10.0, gt=0)
    memory_mb: int = Field(default=1024, ge=64)
    cpu_s: int = Field(default=10, ge=1)
    file_mb: int = Field(default=16, ge=1)
    max_processes: int = Field(default=32, ge=2)  # the sandbox's init + the program's own processes
    tmp_mb: int = Field(default=64, ge=1)
    allow_weak_isolation: bool = False


HarnessTask = Literal["hellaswag", "mmlu", "truthfulqa", "gsm8k", "humaneval", "wikitext", "arc"]
HARNESS_TASKS = ("hellaswag", "mmlu", "truthfulqa", "gsm8k", "humaneval", "wikitext", "arc")
# lm_eval tasks that take local files (xoron_pipelines.evaluation.harness.LOCAL_FILE_TASKS) -> their benchmark
LocalFileTask = Literal[
    "hellaswag", "truthfulqa_mc1", "truthfulqa_mc2", "gsm8k", "wikitext", "arc_easy", "arc_challenge"
]


class LocalDataset(StrictModel):
    """Local JSON-lines files of one lm_eval task, in the hub dataset's own columns, per split."""

    train: str | None = None  # few-shot examples (num_fewshot > 0)
    validation: str | None = None
    test: str | None = None

    @model_validator(mode="after")
    def _check(self) -> LocalDataset:
        if self.validation is None and self.test is None:
            raise ValueError("a local dataset needs a validation or a test file")
        return self

    def files(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Harness(StrictModel):
    """Standard tasks through lm-evaluation-harness (src/xoron_pipelines/evaluation/harness.py)."""

    enabled: bool = True
    tasks: list[HarnessTask] = Field(default_factory=lambda: list(HARNESS_TASKS))
    limit: int | None = Field(default=50, ge=1)  # items per task (null = all)
    batch_size: int = Field(default=8, ge=1)
    num_fewshot: int | None = Field(default=None, ge=0)  # null = each task's own default
    include_path: str | None = None  # a directory of custom lm_eval task YAMLs (all of them run)
    datasets: dict[LocalFileTask, LocalDataset] = Field(default_factory=dict)
    heldout_text: bool = True  # the shipped perplexity task xoron_heldout_text over packed_val's text
    max_length: int | None = Field(default=None, ge=1)  # model inputs per window; null = max positions
    max_gen_toks: int = Field(default=256, ge=1)  # generation budget of tasks that set none (gsm8k)

    @model_validator(mode="after")
    def _check(self) -> Harness:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks lists a name twice: {self.tasks}")
        orphan = [k for k in self.datasets if k.split("_")[0] not in self.tasks]
        if orphan:
            raise ValueError(f"datasets {orphan} belong to no task in tasks {self.tasks}")
        return self


class Params(StrictModel):
    evals: list[EvalName] = Field(default_factory=lambda: list(EVAL_NAMES))
    eval_batch_size: int = Field(default=16, ge=1)
    evals_registry_path: str | None = None
    tasks: dict[EvalName, TaskFile] = Field(default_factory=_default_tasks)
    max_samples: int | None = Field(default=None, ge=1)  # items per task (null = all)
    compare_stages: list[Stage] = Field(default_factory=lambda: list(STAGES))
    chat_prompts: list[Stage] = Field(default_factory=lambda: ["tools", "preference"])
    device: DeviceSpec = "auto"
    seed: Seed = 0
    progress: bool = True
    offline_tasks: OfflineTasks = Field(default_factory=OfflineTasks)
    perplexity: Perplexity = Field(default_factory=Perplexity)
    multiple_choice: MultipleChoice = Field(default_factory=MultipleChoice)
    gsm8k: GSM8K = Field(default_factory=GSM8K)
    humaneval: HumanEval = Field(default_factory=HumanEval)
    sandbox: Sandbox = Field(default_factory=Sandbox)
    harness: Harness = Field(default_factory=Harness)

    @model_validator(mode="after")
    def _check(self) -> Params:
        for key in ("evals", "compare_stages", "chat_prompts"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"{key} lists a name twice: {values}")
        for name in EVAL_NAMES:
            if name not in self.tasks:
                self.tasks[name] = TaskFile()
        missing = [
            n
            for n in self.evals
            if self.tasks[n].path is None and self.evals_registry_path is None and getattr(self.offline_tasks, n) == 0
        ]
        if missing:
            raise ValueError(
                f"evals {missing} have no task file: set tasks.<name>.path, evals_registry_path, "
                f"or a non-zero offline_tasks.<name>"
            )
        if not self.compare_stages:
            raise ValueError("compare_stages needs at least one stage")
        return self

    def task_format(self, name: str) -> str:
        return self.tasks[name].format or DEFAULT_FORMATS[name]

    def limit(self, name: str) -> int | None:
        return self.tasks[name].max_samples or self.max_samples
