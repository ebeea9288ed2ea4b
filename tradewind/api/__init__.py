"""The resource API: pydantic models of TrainingRun, RLRun and Sweep.

This package is the single source of truth for the CRDs (`tradewind crds`), the operator and
the trainer. It imports neither kopf nor torch.
"""

from tradewind.api.base import GROUP, VERSION
from tradewind.api.manifest import ManifestError, dump_resource, load_resources, parse_resource
from tradewind.api.resources import (
    API_VERSION,
    KINDS,
    Resource,
    RLRun,
    Sweep,
    TrainingRun,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "ManifestError",
    "RLRun",
    "Resource",
    "Sweep",
    "TrainingRun",
    "dump_resource",
    "load_resources",
    "parse_resource",
]
