"""Evaluation: metrics and bootstrap intervals, held-out comparison, the benchmark runner
(spec / run / report) and the mean-level pseudobulk track."""
