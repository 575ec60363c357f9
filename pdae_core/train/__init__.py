"""Training: the one loop (stratified or full batches, validation, best-weight selection,
EMA), distributed helpers and background jobs for the dashboard."""
