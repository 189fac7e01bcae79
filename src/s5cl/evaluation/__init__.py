"""Layer 6: scores: metrics, statistics, novelty, the report page, prediction, sweep tables."""
