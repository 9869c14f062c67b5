"""The original pipeline's model classes, on the native engine."""

from prospect_core.models.processing_custom_smolvlm import CustomSmolVLMProcessor
from prospect_core.models.smolvlm_with_strategies import SmolVLMWithStrategies

__all__ = ["CustomSmolVLMProcessor", "SmolVLMWithStrategies"]
