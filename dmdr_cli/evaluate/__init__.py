"""Benchmark harnesses: GenEval (Ghosh et al. 2023), DPG-Bench (ELLA) and bootstrap statistics.

Modules import their heavy dependencies (transformers, open_clip) only where a model is loaded, so the
scoring rules can be imported and tested without weights. Protocol facts: docs in /work/shared/EVAL.md.
"""
