"""The trainer: what runs inside the pods (under torchrun) and behind `tradewind run -f`."""
