"""Context strategies: what to do when the cache fills up. Same modules and names as the pipeline our users
come from (base_strategy, drop_all, drop_middle, summarize_and_drop, summarize_with_dst,
context_strategy_factory)."""

from prospect_core.context_strategies.base_strategy import (
    BaseContextStrategy,
    ContextStrategy,
    NoneStrategy,
    cache_layers,
    cache_length,
)
from prospect_core.context_strategies.context_strategy_factory import (
    ContextStrategyFactory,
    create_strategy,
    load_strategy_config,
)
from prospect_core.context_strategies.drop_all import DropAllStrategy
from prospect_core.context_strategies.drop_middle import DropMiddleStrategy
from prospect_core.context_strategies.summarize_and_drop import SummarizeAndDropStrategy
from prospect_core.context_strategies.summarize_with_dst import SummarizeWithDSTStrategy

__all__ = [
    "BaseContextStrategy",
    "ContextStrategy",
    "ContextStrategyFactory",
    "DropAllStrategy",
    "DropMiddleStrategy",
    "NoneStrategy",
    "SummarizeAndDropStrategy",
    "SummarizeWithDSTStrategy",
    "cache_layers",
    "cache_length",
    "create_strategy",
    "load_strategy_config",
]
