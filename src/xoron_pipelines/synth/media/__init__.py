"""Procedural media for the offline default run: rendered scenes (:mod:`.scenes`), clips of moving
objects (:mod:`.clips`) and a synthetic spoken vocabulary (:mod:`.speech`). Every item comes with
its ground truth, and each module has an exact analyser of what it renders, so generated media can
be checked against their prompts without a learned judge. :mod:`.corpus` turns them into media
records (train and held-out streams) for the ``synth`` pipeline."""
