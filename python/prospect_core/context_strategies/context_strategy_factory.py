"""Strategies by name: the original's factory (same defaults), open to strategies of your own."""

import inspect
import re
from pathlib import Path

from prospect_core.context_strategies.base_strategy import BaseContextStrategy, ContextStrategy, NoneStrategy
from prospect_core.context_strategies.drop_all import DropAllStrategy
from prospect_core.context_strategies.drop_middle import DropMiddleStrategy
from prospect_core.context_strategies.summarize_and_drop import SummarizeAndDropStrategy
from prospect_core.context_strategies.summarize_with_dst import SummarizeWithDSTStrategy

# What the original factory fills in when the config leaves it out (some differ from the classes' own defaults).
FACTORY_DEFAULTS = {
    "drop_middle": {"last_keep_len": 512},
    "summarize_and_drop": {"summary_max_length": 512, "summary_prompt": "Summarize the task progress so far."},
    "summarize_with_dst": {"summary_max_length": 512},
}


class ContextStrategyFactory:
    _registry = {
        "none": NoneStrategy,
        ContextStrategy.DROP_ALL.value: DropAllStrategy,
        ContextStrategy.DROP_MIDDLE.value: DropMiddleStrategy,
        ContextStrategy.SUMMARIZE_AND_DROP.value: SummarizeAndDropStrategy,
        ContextStrategy.SUMMARIZE_WITH_DST.value: SummarizeWithDSTStrategy,
    }

    @classmethod
    def register(cls, name: str, strategy_cls) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name expected a non-empty string, got {name!r}")
        if not (isinstance(strategy_cls, type) and issubclass(strategy_cls, BaseContextStrategy)):
            raise TypeError(f"strategy_cls expected a BaseContextStrategy subclass, got {strategy_cls!r}")
        cls._registry[name] = strategy_cls

    @classmethod
    def known(cls) -> list:
        return sorted(cls._registry)

    @classmethod
    def strategy_class(cls, strategy_type: str):
        if isinstance(strategy_type, ContextStrategy):
            strategy_type = strategy_type.value
        if strategy_type not in cls._registry:
            raise ValueError(f"strategy_type expected one of {', '.join(cls.known())}, got {strategy_type!r}")
        return cls._registry[strategy_type]

    @classmethod
    def create_strategy(
        cls, strategy_type: str, max_seq_len: int, reserved_seq_len: int = 128, **kwargs
    ) -> BaseContextStrategy:
        strategy_cls = cls.strategy_class(strategy_type)
        name = strategy_type.value if isinstance(strategy_type, ContextStrategy) else strategy_type
        config = {**FACTORY_DEFAULTS.get(name, {}), **kwargs}
        return strategy_cls(max_seq_len=max_seq_len, reserved_seq_len=reserved_seq_len, **config)

    @classmethod
    def from_yaml(cls, path, max_seq_len: int, reserved_seq_len: int = 128, variables=None) -> BaseContextStrategy:
        """A strategy from one of the original's context_strategy/*.yaml files."""
        strategy_type, config = load_strategy_config(path, variables)
        return cls.create_strategy(strategy_type, max_seq_len, reserved_seq_len, **config)


def create_strategy(strategy_type: str, max_seq_len: int, reserved_seq_len: int = 128, **kwargs):
    return ContextStrategyFactory.create_strategy(strategy_type, max_seq_len, reserved_seq_len, **kwargs)


_INTERPOLATION = re.compile(r"\$\{([^}]+)\}")


def load_strategy_config(path, variables=None):
    """(strategy_type, config) from a context_strategy YAML file, as the original's evaluator reads it: `type`
    taken out, the rest the strategy's keyword arguments. Hydra interpolations such as
    ${data.dst_annotation_path} are filled from `variables` ({"data.dst_annotation_path": ...}); unknown keys,
    and interpolations left unfilled, raise."""
    import yaml  # pyyaml: the hf extra's, needed only for YAML configs

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no such file {str(p)!r}")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError(f"{p.name}: expected a mapping with a 'type' key, got {data!r}")
    config = dict(data)
    strategy_type = config.pop("type")
    strategy_cls = ContextStrategyFactory.strategy_class(strategy_type)
    accepted = set()
    for klass in strategy_cls.__mro__:
        if "__init__" in vars(klass):
            accepted |= {
                n
                for n, prm in inspect.signature(klass.__init__).parameters.items()
                if prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY) and n != "self"
            }
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ValueError(f"{p.name}: unknown keys {unknown} for {strategy_type} (it takes {sorted(accepted)})")
    return strategy_type, {k: _fill(v, variables or {}, f"{p.name}: {k}") for k, v in config.items()}


def _fill(value, variables, where):
    if isinstance(value, dict):
        return {k: _fill(v, variables, where) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def sub(m):
        if m.group(1) not in variables:
            raise ValueError(
                f"{where}: ${{{m.group(1)}}} is a Hydra interpolation; pass variables={{'{m.group(1)}': ...}}"
            )
        return str(variables[m.group(1)])

    return _INTERPOLATION.sub(sub, value)
