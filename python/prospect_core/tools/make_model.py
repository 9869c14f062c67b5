"""Random-weight SmolVLM2 checkpoints in Hugging Face format, made offline.

`make_model(out, preset)` writes config.json, model.safetensors, a byte-level
BPE tokenizer that holds the SmolVLM2 special tokens, and the processor files,
so that both transformers (AutoModelForImageTextToText, AutoProcessor) and
prospect load the same folder. The tiny preset is for tests; the others have
the real SmolVLM2 shapes, for benchmarks. Their words are noise: weights are random.
The 256m-smollm2 preset is the exception: its text model and tokenizer are
SmolLM2-135M-Instruct's (see prospect_core.tools.smollm2), only its vision side is random.
"""

import contextlib
import copy
import json
import shutil
from pathlib import Path

import torch

from prospect_core.config import DEFAULT_DTYPE
from prospect_core.model import DTYPES, TORCH_DTYPES
from prospect_core.tools import smollm2


def _text(hidden, layers, heads, kv_heads, mlp, *, head_dim=64, max_positions=8192, vocab_size=49280):
    """A text_config: the decoder's shape; RoPE base and norm epsilon are SmolVLM2's throughout. vocab_size None
    leaves it to the tokenizer (the tiny preset)."""
    cfg = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=mlp,
        rope_theta=100000.0,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
    )
    if vocab_size is not None:
        cfg["vocab_size"] = vocab_size
    return cfg


def _vision(hidden, layers, heads, mlp, image_size, patch_size):
    """A vision_config: the SigLIP tower's shape."""
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        image_size=image_size,
        patch_size=patch_size,
    )


# Shapes from the public SmolVLM2 configs (see the project's reference notes).
_VISION_512 = _vision(768, 12, 12, 3072, 512, 16)

# _text(hidden, layers, heads, kv heads, MLP width); _vision(hidden, layers, heads, MLP width, image px, patch px)
PRESETS = {
    "tiny": dict(
        text_config=_text(64, 2, 4, 2, 128, head_dim=16, vocab_size=None),
        vision_config=_vision(32, 2, 2, 64, 64, 8),
        scale_factor=2,
    ),
    "256m": dict(text_config=_text(576, 30, 9, 3, 1536), vision_config=dict(_VISION_512), scale_factor=4),
    "500m": dict(text_config=_text(960, 32, 15, 5, 2560), vision_config=dict(_VISION_512), scale_factor=4),
    "2.2b": dict(
        text_config=_text(2048, 24, 32, 32, 8192, max_positions=16384),
        vision_config=_vision(1152, 27, 16, 4304, 384, 14),
        scale_factor=3,
    ),
}

SMOLLM2 = "256m-smollm2"  # the 256m shape with real SmolLM2-135M-Instruct text weights (prospect_core.tools.smollm2)
PRESET_NAMES = list(PRESETS) + [SMOLLM2]

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
    "<video>",
] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]

CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Text the tokenizer learns its merges from: the register of a task assistant.
_CORPUS = """\
You are a helpful assistant watching a video of a person doing a task. Say something when it helps.
First, take the cup from the shelf and put it on the table. Now turn the box so the label faces you.
Good, the lid is on. Next, pour the water slowly. Be careful, the pan is hot. Wait until it boils.
Please summarize the progress. The person has washed the vegetables, cut the onion and heated the oil.
What are you doing now? I am assembling the shelf. Which screw goes here? Use the short one.
Frame from 00:12: a hand holds a small object and turns it. People walk along a campus path.
The task is almost done. Check the last step, then clean the table. Well done, that looks right.
Pick up the knife, slice the bread, and place the slices on the plate. Open the drawer on the left.
Assistant: You missed a step: tighten the bolt before attaching the door. User: Thanks, what next?
"""


def build_tokenizer(vocab_size: int = 600):
    """A byte-level BPE tokenizer trained on a small built-in text, with SmolVLM2's special tokens."""
    # Imported here: transformers takes seconds, and `import prospect_core` imports this module.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _set(cfg: dict, dotted: str, value):
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            raise ValueError(f"--set {dotted}: '{k}' is not a config section (sections: text_config, vision_config)")
        node = node[k]
    node[keys[-1]] = value


def parse_overrides(pairs):
    """['text_config.num_key_value_heads=2', ...] -> {dotted key: value}, values parsed as JSON where they can be."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ValueError(f"--set expected key=value, got '{p}'")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _config(preset: str, tokenizer, overrides: dict | None) -> dict:
    """The preset's config with the overrides applied and the tokenizer's ids filled in."""
    cfg = copy.deepcopy(PRESETS["256m" if preset == SMOLLM2 else preset])
    cfg["text_config"].setdefault("vocab_size", len(tokenizer))
    for k, v in (overrides or {}).items():
        _set(cfg, k, v)
    text = cfg["text_config"]
    if text["vocab_size"] < len(tokenizer):
        raise ValueError(
            f"text_config.vocab_size expected >= the tokenizer's {len(tokenizer)} tokens, got {text['vocab_size']}"
        )
    text.update(
        model_type="llama",
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_utterance>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    cfg["image_token_id"] = tokenizer.convert_tokens_to_ids("<image>")
    return cfg


def _save_processor(out: Path, config, tokenizer) -> None:
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor  # as make_model's

    v = config.vision_config
    image_seq_len = (v.image_size // v.patch_size) ** 2 // config.scale_factor**2
    size = {"longest_edge": v.image_size}
    image_processor = SmolVLMImageProcessor(size={"longest_edge": 4 * v.image_size}, max_image_size=size)
    video_processor = SmolVLMVideoProcessor(
        size=size, max_image_size=size, video_sampling={"fps": 1, "max_frames": 64, "video_size": size}
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_len=image_seq_len,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)


@torch.no_grad()
def _random_model(cfg: dict, lm_head_scale: float, tokenizer, text_weights: dict | None):
    """The model of `cfg`, random but for SmolLM2's text weights when given."""
    # transformers takes seconds to import, and `import prospect_core` imports this module.
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    config = SmolVLMConfig(**cfg)
    model = SmolVLMForConditionalGeneration(config).eval()
    h = config.text_config.hidden_size
    model.lm_head.weight.normal_(0.0, lm_head_scale / h**0.5)
    if text_weights is not None:
        state = smollm2.text_state(text_weights, tokenizer, cfg["text_config"]["vocab_size"])
        missing, unexpected = model.load_state_dict(state, strict=False)
        text_missing = [k for k in missing if k.startswith(("model.text_model.", "lm_head"))]
        if unexpected or text_missing:
            raise ValueError(
                f"SmolLM2 weights do not fit the text model: missing {text_missing[:5]}, unexpected {unexpected[:5]}"
            )
    return model


# Just over 60 lines: the docstring documents every argument; the body is a straight sequence of writes.
def make_model(
    out,
    preset: str = "tiny",
    seed: int = 0,
    dtype: str = DEFAULT_DTYPE,
    overrides: dict | None = None,
    lm_head_scale: float = 4.0,
    device: str = "cpu",
) -> Path:
    """Writes a complete random-weight SmolVLM2 folder to `out` and returns its path.

    overrides: {"text_config.num_key_value_heads": 2, "scale_factor": 2, ...} applied to the preset.
    lm_head_scale: lm_head rows have std lm_head_scale / sqrt(hidden), so next-token distributions
    are peaked and greedy choices are not ties within rounding.
    device: where the random weights are drawn ("cpu", "cuda" or "cuda:N"). On a GPU the 2.2b preset
    takes seconds instead of minutes; the weights are moved to the CPU to be saved. Other devices
    draw other random numbers from the same seed, so only "cpu" (the default) reproduces the
    checkpoints the tests make.
    """
    if preset not in PRESETS and preset != SMOLLM2:
        raise ValueError(f"preset expected one of {', '.join(PRESET_NAMES)}, got '{preset}'")
    torch_dtype = TORCH_DTYPES.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"dtype expected one of {', '.join(DTYPES)}, got '{dtype}'")
    if not isinstance(device, str) or not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"device expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but torch sees no CUDA device")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    text_weights = None
    if preset == SMOLLM2:
        meta, text_weights = smollm2.read()
        tokenizer = smollm2.build_tokenizer(meta, SPECIAL_TOKENS)
    else:
        tokenizer = build_tokenizer()
    cfg = _config(preset, tokenizer, overrides)
    text = cfg["text_config"]

    torch.manual_seed(seed)
    # On the CPU no device context at all, so the default path stays exactly what it always was.
    with contextlib.nullcontext() if device == "cpu" else torch.device(device):
        model = _random_model(cfg, lm_head_scale, tokenizer, text_weights)
    config = model.config
    model = model.to(torch_dtype)
    if device != "cpu":
        model = model.to("cpu")
    model.save_pretrained(out, safe_serialization=True)
    if preset == SMOLLM2:  # its blocks as stored, for load_model(..., weights="gguf")
        shutil.copyfile(smollm2.gguf_path(), out / smollm2.CHECKPOINT_GGUF)
    _save_processor(out, config, tokenizer)
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": text["bos_token_id"],
                "eos_token_id": text["eos_token_id"],
                "pad_token_id": text["pad_token_id"],
            },
            indent=2,
        )
    )
    _portable(out)
    return out


def _edit_json(path: Path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _portable(out: Path):
    """Makes the saved files load the same on transformers 4.57 and 5.x, whichever wrote them.

    5.x writes spellings that 4.57 misreads: rope_parameters only (4.57 reads rope_theta and would
    silently fall back to 10000), tokenizer_class TokenizersBackend (absent from 4.57) and a list
    under extra_special_tokens (4.57 expects a dict of named tokens there). 5.x also reads the 4.x
    spellings (rope_theta next to rope_parameters, PreTrainedTokenizerFast, additional_special_tokens),
    so those are what is written. model_input_names is pinned because 4.57's
    PreTrainedTokenizerFast would add token_type_ids, which SmolVLM's generate() rejects.
    """

    def config(cfg):
        text = cfg["text_config"]
        rope = text.get("rope_parameters") or {}
        if "rope_theta" in rope:
            text.setdefault("rope_theta", rope["rope_theta"])

    def tokenizer(cfg):
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        extra = cfg.get("extra_special_tokens")
        if isinstance(extra, list):
            cfg["additional_special_tokens"] = cfg.pop("extra_special_tokens")
        cfg["model_input_names"] = ["input_ids", "attention_mask"]

    _edit_json(out / "config.json", config)
    _edit_json(out / "tokenizer_config.json", tokenizer)
