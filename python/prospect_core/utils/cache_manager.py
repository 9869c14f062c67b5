"""KVCacheManager: the runner's cache between turns, and the initial snapshot drop_middle keeps."""

from prospect_core.context_strategies.base_strategy import cache_length


class KVCacheManager:
    def __init__(self, context_strategy=None):
        self.context_strategy = context_strategy
        self.reset()

    def reset(self):
        """A new video: no cache, no snapshot."""
        self.past_key_values = None
        self.last_msg_tokens = None
        self.initial_kv_cache = None

    def update_cache(self, new_cache):
        """The cache after a generation; the first one is the initial cache drop_middle keeps."""
        self.past_key_values = new_cache
        if self.initial_kv_cache is None and new_cache is not None:
            self.initial_kv_cache = new_cache
            if self.context_strategy is not None and hasattr(self.context_strategy, "set_initial_cache"):
                self.context_strategy.set_initial_cache(new_cache)

    def get_cache(self):
        return self.past_key_values

    def get_cache_length(self) -> int:
        return cache_length(self.past_key_values)

    def has_cache(self) -> bool:
        return self.past_key_values is not None

    def get_cache_stats(self) -> dict:
        return {
            "cache_length": self.get_cache_length(),
            "has_initial_cache": self.initial_kv_cache is not None,
            "strategy": self.context_strategy.name if self.context_strategy else "none",
        }
