"""The Tradewind operator: kopf handlers that turn runs and sweeps into torchrun Jobs.

Imports neither torch nor the trainer; the operator image installs only the `operator` extra.
"""
