"""Batch scoring through serving endpoints (``zeroserve batch score``): see ``router.batch.scorer``."""

from router.batch.scorer import BatchJob, BatchResult, BatchScoringError, score, score_async

__all__ = ["BatchJob", "BatchResult", "BatchScoringError", "score", "score_async"]
