"""Predictors of a plan's cost: exact size (`size`), latency (`latency`); accuracy proxies follow.

Each predictor answers for a batch of plans at once (`predict(plans)`), because the search scores
thousands.
"""

from predictors.size import LayerSize, PlanBatch, SizePredictor, SizeReport, size_report

__all__ = ["LayerSize", "PlanBatch", "SizePredictor", "SizeReport", "size_report"]
