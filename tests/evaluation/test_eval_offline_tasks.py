"""Offline tasks: valid, seeded, correct answers, and held out from every training generator in
distribution (templates, vocabulary and stdlib files the training data does not use)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from xoron_pipelines.data import stdlib_corpus
from xoron_pipelines.evaluation import offline_tasks as ot
from xoron_pipelines.evaluation import stats
from xoron_pipelines.evaluation import task_files as tf
from xoron_pipelines.evaluation.generation_tasks import check_completion, extract_final_number
from xoron_pipelines.pipelines.data_processing.params import StdlibCorpus
from xoron_pipelines.pipelines.evaluation.params import DEFAULT_FORMATS
from xoron_pipelines.sandbox import SandboxLimits, SandboxWorker
from xoron_pipelines.synth.generators import common, programs, reasoning

COUNTS = {
    "docstring_continuation": 6,
    "program_output": 40,
    "arithmetic_word_problems": 40,
    "unanswerable_refusal": 40,
    "function_synthesis": 6,
    "heldout_text": 5,
}


@pytest.fixture(scope="module")
def corpus(project_root) -> StdlibCorpus:
    """The stdlib corpus settings of the default data_processing run (what training reads)."""
    conf = yaml.safe_load((project_root / "conf/base/parameters_data_processing.yml").read_text())
    return StdlibCorpus.model_validate(conf["data_processing"]["stdlib_corpus"])


@pytest.fixture(scope="module")
def tasks(corpus):
    return ot.build(5, COUNTS, corpus)


def test_tasks_are_valid_deterministic_and_seeded(tasks, corpus):
    assert {k: len(v) for k, v in tasks.items()} == COUNTS
    for name, fmt in DEFAULT_FORMATS.items():
        tf.validate_rows(tasks[name], fmt, name)
    again = ot.build(5, {"arithmetic_word_problems": 40, "unanswerable_refusal": 40}, corpus)
    assert again["arithmetic_word_problems"] == tasks["arithmetic_word_problems"]
    assert again["unanswerable_refusal"] == tasks["unanswerable_refusal"]
    other = ot.build(6, {"arithmetic_word_problems": 40}, corpus)
    assert other["arithmetic_word_problems"] != tasks["arithmetic_word_problems"]


def test_answers_are_right(tasks):
    for row in tasks["arithmetic_word_problems"]:  # the "#### answer" is the result of the last step
        steps = row["answer"].splitlines()[:-1]
        for step in steps:  # every step's arithmetic holds
            a, op, b, r = re.search(r"(-?\d+) ([+×-]) (-?\d+) = (-?\d+)\.$", step).groups()
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "×": int(a) * int(b)}[op] == int(r), step
        assert extract_final_number(steps[-1]) == extract_final_number(row["answer"])
        assert int(extract_final_number(row["answer"])) >= 0
    # what each program prints is what it really prints (run in the sandbox), and the
    # distractors differ from it; every template is covered
    seen = set()
    with SandboxWorker(SandboxLimits()) as worker:
        for row in tasks["program_output"]:
            code = row["question"].split("\n", 1)[1]
            assert worker.run(code).stdout.strip() == row["choices"][row["answer"]], code
            assert len(set(row["choices"])) == 4
            seen.add(row["template"])
    assert seen == {t.name for t in ot.PROGRAMS}
    for problem in tasks["function_synthesis"]:  # every canonical solution passes its own tests
        assert check_completion(problem, problem["canonical_solution"], SandboxLimits()).ok


def _skeleton(text: str, names=()) -> str:
    """Text with numbers, quoted strings and the given names replaced by placeholders."""
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(name, "NAME")
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "STR", text)
    return re.sub(r"\d+", "N", text)


def test_no_task_is_scored_on_a_training_template(tasks):
    """Each task's items, with numbers and names abstracted, never match a training item's shape."""
    rng = random.Random(0)
    names = (*common.FIRST_NAMES, *common.CITIES, *ot.EVAL_NAMES, *ot.EVAL_PLACES)
    # our vocabulary is not synth's
    assert not set(ot.EVAL_NAMES) & set(common.FIRST_NAMES) and not set(ot.EVAL_PLACES) & set(common.CITIES)
    # program_output: no program has the shape of a synth program (any difficulty)
    synth_programs = {
        _skeleton(programs.python_program(rng, d, allow_error=False))
        for d in ("easy", "medium", "hard")
        for _ in range(400)
    }
    for row in tasks["program_output"]:
        assert _skeleton(row["question"].split("\n", 1)[1] + "\n") not in synth_programs
    # arithmetic_word_problems: no question has the shape of a synth word problem (lead-ins removed)
    synth_questions = set()
    for d in ("easy", "medium", "hard"):
        for _ in range(600):
            synth_questions.add(_skeleton(reasoning.cot_problem(rng, d)[1], names))
    ours = {_skeleton(r["question"], names) for r in tasks["arithmetic_word_problems"]}
    assert len(ours) >= len(ot.WORD_PROBLEMS) and not ours & synth_questions
    # unanswerable_refusal: neither the questions nor any answer has the shape of an
    # anti-hallucination question / refusal, and no refusal uses the trained "I don't know" opening
    idk = [reasoning.idk_question(rng, d) for d in ("easy", "hard") for _ in range(600)]
    synth_q = {_skeleton(q, names) for _, q, _ in idk}
    synth_a = {_skeleton(a, names) for _, _, a in idk}
    for row in tasks["unanswerable_refusal"]:
        assert _skeleton(row["question"], names) not in synth_q
        for choice in row["mc1_targets"]["choices"]:
            assert _skeleton(choice, names) not in synth_a and "don't know" not in choice.lower()
    # function_synthesis: no synth generator defines or mentions these functions
    synth_src = "".join(p.read_text() for p in Path(reasoning.__file__).parent.glob("*.py"))
    assert not [t.name for t in ot.FUNCTIONS if t.name in synth_src]


def test_docstring_continuation_reads_only_stdlib_files_training_does_not(tasks, corpus):
    rows = [row for kind in ("code", "prose") for row in stdlib_corpus.iter_rows(kind, corpus) if "text" in row]
    read = {row["_file"] for row in rows}
    root = stdlib_corpus.stdlib_root()
    held = {f"stdlib:{p.relative_to(root).as_posix()}" for p in ot.heldout_stdlib_files(corpus)}
    assert held and not held & read
    training = " ".join(" ".join(row["text"].split()) for row in rows)
    for row in tasks["docstring_continuation"]:
        gold = row["endings"][row["label"]]
        assert row["ctx"] not in training and f"{row['ctx']} {gold}" not in training
        module_file = row["source_id"].replace(".", "/").replace("stdlib:", "")
        assert not any(f.startswith(f"stdlib:{module_file}") for f in read)
    with pytest.raises(ValueError, match="no file is held out"):
        ot.heldout_stdlib_files(StdlibCorpus(max_bytes=None))


def test_refusal_is_not_given_away_by_answer_length():
    """Scorers that look only at answer length (longest, shortest, second longest) are at chance:
    the refusal's length rank is uniform, so each lands within the 95% interval of 1/4."""
    rows = ot.unanswerable_refusal(random.Random(11), 400)
    ranks = []
    for row in rows:
        t = row["mc1_targets"]
        lengths = [len(c) for c in t["choices"]]
        truth = lengths[t["labels"].index(1)]
        assert lengths.count(truth) == 1  # no tie with the refusal
        ranks.append(sorted(lengths).index(truth))
    for rank in range(4):  # e.g. rank 3 = "pick the longest"
        acc = float(np.mean([r == rank for r in ranks]))
        lo, hi = stats.wilson_interval(acc * len(ranks), len(ranks))
        assert lo <= 0.25 <= hi, (rank, acc)
    # each question's answers are of one frame: the fabrications stay within the refusal's length band
    for row in rows:
        lengths = sorted(len(c) for c in row["mc1_targets"]["choices"])
        assert lengths[-1] - lengths[0] <= 40
