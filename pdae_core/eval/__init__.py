"""Evaluation: metrics and bootstrap intervals, held-out comparison, the benchmark runner
(spec / run / report), the mean-level pseudobulk track and the genetic-interaction
metrics of doubles (:mod:`.interactions`)."""
