"""The original pipeline's batch generator, mirrored."""

from prospect_core.generators.baseline_generator import BaselineGenerator

__all__ = ["BaselineGenerator"]
