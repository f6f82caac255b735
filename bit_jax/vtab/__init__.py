"""VTAB-1k: the 19 tasks (`registry`), their label preprocessing (`labels`), fine-tuning them
by a protocol (`run`) and the results report beside published numbers (`report`). Command
line: `python -m bit_jax.vtab list --json | run ... | report ...`.
"""
