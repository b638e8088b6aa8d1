"""Offline evaluation: the next-item protocol, baselines, metrics and the report."""

from insession.evaluation.evaluate import ENGINE_NAMES, EvalOptions, EvalResult, evaluate
from insession.evaluation.protocol import Split, time_split

__all__ = ["ENGINE_NAMES", "EvalOptions", "EvalResult", "Split", "evaluate", "time_split"]
