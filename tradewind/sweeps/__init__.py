"""Sweeps: the Optuna study behind a Sweep (`study`), shared by the operator's in-cluster
sweeps and `tradewind run -f` (`local`). Imports neither torch nor the trainer."""
