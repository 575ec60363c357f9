"""Data set-up: the perturbation registry, column and control detection, dataset defaults,
preprocessing, row readers, hold-out splits, synthetic data and the built-in datasets."""
