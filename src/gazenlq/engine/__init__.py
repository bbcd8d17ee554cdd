"""The search engine: bundles run by ONNX Runtime over feature stores, streaming and cached.

Imports no torch, by rule: numpy, zarr, onnxruntime, tokenizers and numba only (a test
checks ``sys.modules`` after a search).
"""

from gazenlq.engine.runtime import Runtime, RuntimeOptions
from gazenlq.engine.search import (
    Moment,
    QueryResult,
    SearchEngine,
    SearchOptions,
    Timings,
    answer_nlq,
    search,
)

__all__ = ["Moment", "QueryResult", "Runtime", "RuntimeOptions", "SearchEngine",
           "SearchOptions", "Timings", "answer_nlq", "search"]
