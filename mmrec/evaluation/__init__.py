"""Evaluation: exact full-catalogue ranking, ranking metrics (torchmetrics) and slices."""

from mmrec.evaluation.metrics import RankingMetrics
from mmrec.evaluation.ranking import (
    SampledCandidates,
    ScoreBias,
    evaluate_scores,
    rank_from_scores,
    rank_targets,
    topk_items,
)
from mmrec.evaluation.slices import SlicedRankingMetrics, plot_metric_by_month, write_slices_csv

__all__ = [
    "RankingMetrics",
    "SampledCandidates",
    "ScoreBias",
    "SlicedRankingMetrics",
    "evaluate_scores",
    "plot_metric_by_month",
    "rank_from_scores",
    "rank_targets",
    "topk_items",
    "write_slices_csv",
]
