"""Tradewind: Kubernetes-native training of trading models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tradewind")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
