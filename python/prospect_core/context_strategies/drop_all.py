"""drop_all: past the threshold, everything goes."""

from prospect_core import _C as core
from prospect_core.context_strategies.base_strategy import BaseContextStrategy


class DropAllStrategy(BaseContextStrategy):
    """Returns (None, last_msg): the caller starts again from its prompt. A KVCache is emptied in place."""

    name = "drop_all"

    def handle_overflow(self, past_key_values, last_msg, **context):
        if isinstance(past_key_values, core.KVCache):
            past_key_values.drop_all()
        return None, last_msg
