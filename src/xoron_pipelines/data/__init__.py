"""Data-processing library: sources, stdlib corpus, cleaning, dedup, tokenizer, mixing, packing.

One module per concern; the ``data_processing`` pipeline's nodes only wire these together.
"""
