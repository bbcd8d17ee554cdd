"""Ego4D NLQ data: annotation ingest and writing, challenge submissions, official evaluation."""

from gazenlq.nlq.annotations import (
    Problem,
    Query,
    QueryKey,
    QueryTable,
    load_queries,
    parse_queries,
    to_nlq_json,
    write_queries,
)
from gazenlq.nlq.evaluation import DEFAULT_KS, DEFAULT_THRESHOLDS, EvalResult, evaluate, iou
from gazenlq.nlq.submission import (
    Entry,
    load_submission,
    parse_submission,
    to_submission_json,
    write_submission,
)

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_THRESHOLDS",
    "Entry",
    "EvalResult",
    "Problem",
    "Query",
    "QueryKey",
    "QueryTable",
    "evaluate",
    "iou",
    "load_queries",
    "load_submission",
    "parse_queries",
    "parse_submission",
    "to_nlq_json",
    "to_submission_json",
    "write_queries",
    "write_submission",
]
