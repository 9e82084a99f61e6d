"""Evaluation library: perplexity / bits-per-byte, multiple choice by log-likelihood
(hellaswag, mmlu, truthfulqa formats), generation tasks (gsm8k exact match, humaneval pass@k
in the sandbox), task files, and the cross-stage report.

Modules (one concern each): :mod:`.lm` (model-facing primitives: token NLL, continuation
log-likelihood, batched generation), :mod:`.perplexity`, :mod:`.multiple_choice`,
:mod:`.generation_tasks`, :mod:`.task_files` (formats, loaders, writers),
:mod:`.offline_tasks` (small generated task files), :mod:`.report`.
"""
