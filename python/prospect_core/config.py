"""Settings and records shared by the runner, compare, the CLI and the server, with one table of defaults.

The mirrored modules (runners/vlm_stream_runner.py, models/, context_strategies/, generators/) keep the
original pipeline's literal defaults in their own signatures: they are that pipeline's, not ours, and must
not move if ours do.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

# ---- the defaults --------------------------------------------------------------------------------------
DEFAULT_MAX_SEQ_LEN = 4096  # the KV cache's slots
DEFAULT_RESERVED_SEQ_LEN = 128  # compress once the cache holds max_seq_len - reserved_seq_len
DEFAULT_MAX_NEW_TOKENS = 100
DEFAULT_LAST_KEEP_LEN = 512  # drop_middle: newest tokens kept
DEFAULT_SUMMARY_MAX_LENGTH = 512  # summarize_and_drop: the longest summary
DEFAULT_STRATEGY = "drop_middle"
DEFAULT_TALK_POLICY = "silence_threshold"
DEFAULT_NOT_TALK_THRESHOLD = 0.5
DEFAULT_BACKEND = "native"
DEFAULT_DTYPE = "float32"
DEFAULT_DEVICE = "cpu"
DEFAULT_WEIGHTS = "dense"  # as the checkpoint stores them; "bf16" halves the decoder, "int8"/"gguf" quantize
WEIGHT_FORMATS = ("dense", "bf16", "int8", "gguf")
DEFAULT_FPS = 2.0
DEFAULT_TEMPERATURE = 0.0  # greedy
DEFAULT_TOP_P = 1.0  # the whole distribution
DEFAULT_SEED = 0
DEFAULT_WINDOW = (-2.0, 4.0)  # compare's matching window in seconds, when no dataset's window is named

TALK_POLICIES = ("silence_threshold", "every_frame", "annotations")
# StreamRunner's cut: whole spans (a frame is never cut in half), positions re-rotated to stay contiguous.
NATIVE_STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {"drop_middle": {"cut": "span", "position_mode": "shift"}}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- settings ------------------------------------------------------------------------------------------
SEED_LIMIT = 2**64  # the engine's seed is an unsigned 64-bit int


@dataclass(frozen=True)
class SamplingParams:
    """How one reply is decoded: the one set of sampling settings that the server's requests, the runner and
    the strategies hand to backend.generate (native and hf) and sampling.python_generate. Checked here, once,
    when made: every layer below takes it as it is.

    stop holds stop strings; generate works on tokens and leaves them to the caller (the server cuts the
    text at the first one), while its stop_token_ids argument are the model's end tokens."""

    temperature: float = DEFAULT_TEMPERATURE  # 0: greedy
    top_p: float = DEFAULT_TOP_P  # sample from the smallest set of tokens whose probability reaches top_p
    seed: int | None = DEFAULT_SEED  # None: a fresh random draw each time
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS  # 0: the prompt goes into the cache, nothing is generated
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature, "a number >= 0", lambda t: t >= 0)
        _check_number("top_p", self.top_p, "a number in (0, 1]", lambda p: 0 < p <= 1)
        if not _is_int(self.max_new_tokens):
            raise TypeError(f"max_new_tokens expected an int >= 0, got {type(self.max_new_tokens).__name__}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens expected an int >= 0, got {self.max_new_tokens!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise TypeError(f"seed expected an int or None, got {type(self.seed).__name__}")
        if self.seed is not None and not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed expected an int in [0, 2**64), got {self.seed!r}")
        if isinstance(self.stop, list):  # a list reads as the tuple: the dataclass stays hashable
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) for s in self.stop):
            raise TypeError(f"stop expected a tuple of strings, got {self.stop!r:.80}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @staticmethod
    def check(value: object, arg: str = "sampling") -> SamplingParams:
        """value, when it is a SamplingParams (checked when it was made); a TypeError naming arg otherwise."""
        if not isinstance(value, SamplingParams):
            raise TypeError(f"{arg} expected a SamplingParams, got {type(value).__name__}")
        return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_number(name: str, value: object, expected: str, ok: Any) -> None:
    """TypeError for a value that is no number (a bool is none), ValueError for one out of range (NaN is)."""
    if not _is_number(value):
        raise TypeError(f"{name} expected {expected}, got {type(value).__name__}")
    if not ok(value):  # NaN fails every comparison
        raise ValueError(f"{name} expected {expected}, got {value!r}")


@dataclass(frozen=True)
class RunnerConfig:
    """Everything StreamRunner takes besides the model: `StreamRunner(model, config=RunnerConfig(...))`, or
    the same names as its keyword arguments. Checked when made, so a bad value fails before any loading."""

    device: str = DEFAULT_DEVICE
    torch_dtype: str = DEFAULT_DTYPE  # a name from prospect_core.model.DTYPES
    weights: str = DEFAULT_WEIGHTS  # one of WEIGHT_FORMATS
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    use_kv_cache: bool = True  # False: the stateless baseline, whatever the strategy
    context_strategy_type: str = DEFAULT_STRATEGY
    context_strategy_config: dict[str, Any] | None = None
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    reserved_seq_len: int = DEFAULT_RESERVED_SEQ_LEN
    backend: str = DEFAULT_BACKEND
    talk_policy: str = DEFAULT_TALK_POLICY
    not_talk_threshold: float = DEFAULT_NOT_TALK_THRESHOLD
    system_prompt: str | None = None
    split_frames: bool = False
    seed: int = DEFAULT_SEED  # frame i samples with seed + i
    top_p: float = DEFAULT_TOP_P
    # Opt-in: a frame whose thumbnail differs from the last kept frame's by less than this (mean absolute
    # difference, in [0, 1] of the pixel range; frames.frame_change) skips the vision encoder, the append and
    # the talk decision, unless a turn arrives with it. None: every frame is processed.
    skip_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.skip_threshold is not None:
            _check_number("skip_threshold", self.skip_threshold, "a number in [0, 1] or None", lambda v: 0 <= v <= 1)
        if self.weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights expected one of {', '.join(WEIGHT_FORMATS)}, got {self.weights!r}")
        if self.talk_policy not in TALK_POLICIES:
            raise ValueError(f"talk_policy expected one of {', '.join(TALK_POLICIES)}, got {self.talk_policy!r}")
        if _is_int(self.max_new_tokens) and self.max_new_tokens < 1:  # generate takes 0, a runner's replies not
            raise ValueError(f"max_new_tokens expected an int >= 1, got {self.max_new_tokens}")
        _ = self.sampling  # checks max_new_tokens, temperature, top_p and seed
        if not 0.0 <= float(self.not_talk_threshold) <= 1.0:
            raise ValueError(f"not_talk_threshold expected a probability in [0, 1], got {self.not_talk_threshold!r}")
        if self.context_strategy_config is not None and not isinstance(self.context_strategy_config, dict):
            raise TypeError(
                f"context_strategy_config expected a dict or None, got {type(self.context_strategy_config).__name__}"
            )

    @property
    def sampling(self) -> SamplingParams:
        """The settings of this runner's replies; the runner samples frame i with seed + i."""
        return SamplingParams(self.temperature, self.top_p, self.seed, self.max_new_tokens)

    @property
    def strategy(self) -> str:
        """The strategy that runs: `none` when use_kv_cache is off (the two spell the same baseline)."""
        return self.context_strategy_type if self.use_kv_cache else "none"

    def strategy_kwargs(self) -> dict[str, Any]:
        """The strategy's keyword arguments: this runner's defaults, then the config's own keys."""
        if not self.use_kv_cache:  # the stateless baseline has no use for a strategy's config
            return {}
        return {**NATIVE_STRATEGY_DEFAULTS.get(self.strategy, {}), **(self.context_strategy_config or {})}


@dataclass(frozen=True)
class CompareConfig:
    """One comparison run: where, on what, and the runner settings every strategy shares. Crosses into worker
    processes and torchrun ranks, so it holds plain values only."""

    model: str
    out: str
    weights_hash: str
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    strategy_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # {strategy: its own keys}
    oracle: bool = False  # replay the reference turns as predictions
    window: tuple[float, float] | None = None
    eval_dataset: str | None = None
    max_frames: int | None = None
    text_metrics: bool = True
    progress: bool = True

    def runner_for(self, strategy: str) -> RunnerConfig:
        """The runner of one strategy, with its config as the runner builds it, so the metadata says what ran."""
        scfg = {**NATIVE_STRATEGY_DEFAULTS.get(strategy, {}), **self.strategy_config.get(strategy, {})}
        talk_policy = "annotations" if self.oracle else self.runner.talk_policy
        return replace(
            self.runner, context_strategy_type=strategy, context_strategy_config=scfg or None, talk_policy=talk_policy
        )

    def run_signature(self, strategy: str) -> dict[str, Any]:
        """What made a strategy's results (<out>/<strategy>/run.json); a resumed run must match it. The keys
        are those of older runs; a setting added since is listed only when it is not its default, so an
        older folder still resumes."""
        r = self.runner_for(strategy)
        sig = {
            "weights_hash": self.weights_hash,
            "max_frames": self.max_frames,
            "oracle": self.oracle,
            "torch_dtype": r.torch_dtype,
            "max_new_tokens": r.max_new_tokens,
            "context_strategy_type": r.context_strategy_type,
            "context_strategy_config": r.context_strategy_config,
            "max_seq_len": r.max_seq_len,
            "reserved_seq_len": r.reserved_seq_len,
            "backend": r.backend,
            "talk_policy": r.talk_policy,
            "not_talk_threshold": r.not_talk_threshold,
            "seed": r.seed,
        }
        default = RunnerConfig()
        later = ("temperature", "top_p", "use_kv_cache", "system_prompt", "split_frames", "weights", "skip_threshold")
        for name in later:
            if getattr(r, name) != getattr(default, name):
                sig[name] = getattr(r, name)
        return sig


# ---- records -------------------------------------------------------------------------------------------
class Record(Mapping[str, Any]):
    """A typed record that still reads as the dict it used to be (`record["talked"]`, `record.get(...)`), for
    code written against those dicts. `to_dict()` is its JSON form, with the same keys in the same order."""

    _optional: tuple[str, ...] = ()  # fields left out of the dict while they are None

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            value = getattr(self, f.name)
            if value is not None or f.name not in self._optional:
                out[f.name] = value
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(eq=False)
class FrameRecord(Record):
    """One frame through StreamRunner.add_frame. Times in ms; text is None when the assistant stayed silent.
    skipped is set only when the runner skips frames (RunnerConfig.skip_threshold): True for a frame that was
    nearly the last kept one and went no further."""

    _optional = ("skipped",)

    frame_index: int
    time: float
    cache_len_before: int
    strategy_applied: str | None = None  # the strategy's name when it compressed the cache during this step
    vision_ms: float = 0.0
    decode_ms: float = 0.0
    silence_prob: float | None = None  # P(end of utterance) at the first step, under silence_threshold
    prefill_ms: float = 0.0
    talked: bool = False
    text: str | None = None
    cache_len_peak: int = 0
    max_position: int = 0
    cache_len_after: int = 0
    skipped: bool | None = None


@dataclass(eq=False)
class TurnRecord(Record):
    """One user turn through StreamRunner.add_user_turn; tokens and text are the reply's, when one was asked."""

    _optional = ("tokens",)

    frame_index: int | None
    time: float | None
    cache_len_before: int
    strategy_applied: str | None = None
    tokens: list[int] | None = None
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    talked: bool = False
    text: str | None = None
    cache_len_peak: int = 0
    max_position: int = 0
    cache_len_after: int = 0


@dataclass
class RunTotals:
    """A run's totals: one video's (run_inference_on_video's "totals"), or several videos' together."""

    frames_processed: int = 0  # every frame of the stream, skipped ones included
    frames_skipped: int = 0
    dialogues_generated: int = 0
    cache_compressions: int = 0
    avg_cache_size: float = 0.0
    peak_cache_size: int = 0
    time_per_frame: float = 0.0  # seconds
    peak_memory_mb: float = 0.0

    @classmethod
    def of_frames(cls, frames: list[FrameRecord], elapsed_s: float, peak_memory_mb: float) -> RunTotals:
        n = len(frames)
        return cls(
            frames_processed=n,
            frames_skipped=sum(bool(f.skipped) for f in frames),
            dialogues_generated=sum(f.talked for f in frames),
            cache_compressions=sum(f.strategy_applied is not None for f in frames),
            avg_cache_size=sum(f.cache_len_after for f in frames) / n if n else 0.0,
            peak_cache_size=max((f.cache_len_peak for f in frames), default=0),
            time_per_frame=elapsed_s / n if n else 0.0,
            peak_memory_mb=peak_memory_mb,
        )

    @classmethod
    def combine(cls, parts: list[RunTotals]) -> RunTotals:
        """Sums and peaks over runs; the averages weighted by their frames."""
        n = sum(p.frames_processed for p in parts)
        return cls(
            frames_processed=n,
            frames_skipped=sum(p.frames_skipped for p in parts),
            dialogues_generated=sum(p.dialogues_generated for p in parts),
            cache_compressions=sum(p.cache_compressions for p in parts),
            avg_cache_size=sum(p.avg_cache_size * p.frames_processed for p in parts) / n if n else 0.0,
            peak_cache_size=max((p.peak_cache_size for p in parts), default=0),
            time_per_frame=sum(p.time_per_frame * p.frames_processed for p in parts) / n if n else 0.0,
            peak_memory_mb=max((p.peak_memory_mb for p in parts), default=0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
