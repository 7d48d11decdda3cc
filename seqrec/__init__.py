"""seqrec: orchestrated multi-view sequential recommender.

The CLI and small shared helpers (errors, atomic writes, hashing) live here; the pipeline itself is
in the top-level packages `flows`, `tasks`, `models` and `validation`.
"""

__version__ = "0.1.0"
