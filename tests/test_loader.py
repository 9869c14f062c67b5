"""The loader refuses damaged and hostile checkpoints with clear errors."""

import json
import shutil
import struct

import pytest

import prospect_core
import prospect_core as pc


def copy_with(good, tmp_path, safetensors_bytes=None, config=None):
    d = tmp_path / "m"
    shutil.copytree(good, d)
    if safetensors_bytes is not None:
        (d / "model.safetensors").write_bytes(safetensors_bytes)
    if config is not None:
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return d


def split(raw):
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join(header, data):
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def first_tensor(header):
    return next(k for k in header if k != "__metadata__")


def damage(raw, how):
    header, data = split(raw)
    name = first_tensor(header)
    if how == "truncated":
        return raw[: len(raw) - 1000]
    if how == "size_lie":
        b, e = header[name]["data_offsets"]
        header[name]["data_offsets"] = [b, e + 4]
    elif how == "out_of_file":
        header[name]["data_offsets"] = [len(data) - 4, len(data) + 4096]
    elif how == "overlap":
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        a, b = names[0], names[1]
        size = header[b]["data_offsets"][1] - header[b]["data_offsets"][0]
        header[b]["data_offsets"] = [header[a]["data_offsets"][0], header[a]["data_offsets"][0] + size]
    elif how == "bad_dtype":
        header[name]["dtype"] = "F7"
    elif how == "absurd_header":
        return struct.pack("<Q", 1 << 62) + raw[8:]
    elif how == "not_json":
        h = b'{"a": \xff\xfe not json'
        return struct.pack("<Q", len(h)) + h + data
    elif how == "non_utf8":
        h = json.dumps({"__metadata__": {"x": "y"}}).encode().replace(b"y", b"\xc3\x28")
        return struct.pack("<Q", len(h)) + h + data
    elif how == "negative_shape":
        header[name]["shape"] = [-1] + header[name]["shape"][1:]
    elif how == "empty":
        return b""
    return join(header, data)


@pytest.mark.parametrize(
    "how, fragment",
    [
        ("truncated", "outside the"),
        ("size_lie", "claims"),
        ("out_of_file", "outside the"),
        ("overlap", "overlap"),
        ("bad_dtype", "unsupported dtype 'F7'"),
        ("absurd_header", "exceeds the 100 MB limit"),
        ("not_json", "not valid JSON"),
        ("non_utf8", "not valid JSON"),
        ("negative_shape", "not a non-negative integer"),
        ("empty", "has no header"),
    ],
)
def test_damaged_safetensors_rejected(tiny_model, tmp_path, how, fragment):
    raw = (tiny_model / "model.safetensors").read_bytes()
    d = copy_with(tiny_model, tmp_path, safetensors_bytes=damage(raw, how))
    with pytest.raises(ValueError, match=fragment) as e:
        prospect_core.load_model(d)
    assert "model.safetensors" in str(e.value)


def test_pickle_checkpoint_refused(tiny_model, tmp_path):
    d = copy_with(tiny_model, tmp_path)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="pickle checkpoint .*convert it to safetensors"):
        prospect_core.load_model(d)


def test_missing_weight_and_wrong_shape(tiny_model, tmp_path):
    cfg = json.loads((tiny_model / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] += 1
    with pytest.raises(ValueError, match="mlp.gate_proj.weight' expected shape"):
        prospect_core.load_model(copy_with(tiny_model, tmp_path, config=cfg))


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda c: c["text_config"].pop("hidden_size"), "text_config.hidden_size is required"),
        (lambda c: c["vision_config"].pop("patch_size"), "vision_config.patch_size is required"),
        (lambda c: c.pop("vision_config"), "vision_config is required"),
        (lambda c: c["text_config"].update(num_hidden_layers="2"), "num_hidden_layers expected an integer, got string"),
        (lambda c: c["text_config"].update(rms_norm_eps=[1]), "rms_norm_eps expected a number, got array"),
        (lambda c: c.update(scale_factor=5), "scale_factor expected a divisor"),
        (lambda c: c["text_config"].update(num_key_value_heads=3), "num_key_value_heads expected a divisor"),
        (
            lambda c: c["text_config"].update(rope_parameters={"rope_type": "yarn", "rope_theta": 1.0}),
            "'yarn' is not supported",
        ),
        (lambda c: c.update(tie_word_embeddings="no"), "tie_word_embeddings expected true or false"),
        (lambda c: c.update(image_token_id=10**6), "image_token_id expected < text_config.vocab_size"),
    ],
)
def test_config_errors_name_the_key(tiny_model, tmp_path, edit, fragment):
    cfg = json.loads((tiny_model / "config.json").read_text())
    edit(cfg)
    with pytest.raises(ValueError, match=fragment):
        prospect_core.load_model(copy_with(tiny_model, tmp_path, config=cfg))


def test_config_defaults_fill_in(tiny_model, tmp_path):
    cfg = json.loads((tiny_model / "config.json").read_text())
    for k in ("rms_norm_eps", "max_position_embeddings", "eos_token_id"):
        cfg["text_config"].pop(k, None)
    cfg["text_config"].pop("rope_parameters")
    cfg["text_config"]["rope_theta"] = 12345.0  # the transformers 4.x spelling
    m = prospect_core.load_model(copy_with(tiny_model, tmp_path, config=cfg))
    assert m.config["text_config"]["rms_norm_eps"] == 1e-6 and m.config["text_config"]["rope_theta"] == 12345.0
    assert m.make_cache(4).rope_theta == 12345.0


def test_config_not_json(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        prospect_core.load_model(copy_with(tiny_model, tmp_path, config="{oops"))


def test_bad_arguments(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        prospect_core.load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="huggingface-cli download someone/missing"):
        prospect_core.load_model("someone/missing")
    with pytest.raises(ValueError, match="dtype expected one of float32, bfloat16, float16, got 'int8'"):
        prospect_core.load_model(tiny_model, dtype="int8")
    with pytest.raises(ValueError, match="device expected 'cpu', 'cuda'"):
        prospect_core.load_model(tiny_model, device="tpu")
    m = prospect_core.load_model(tiny_model)
    import torch

    with pytest.raises(ValueError, match=r"input_ids expected token ids in \[0, 600\), got values in \[0, 600\]"):
        m.embed_tokens(torch.tensor([[0, 600]]))
    with pytest.raises(ValueError, match=r"pixel_values expected images of \[3, 64, 64\]"):
        m.image_features(torch.zeros(1, 3, 32, 32))
    with pytest.raises(TypeError, match="pixel_values expected a torch.Tensor, got list"):
        m.image_features([1, 2])
    with pytest.raises(ValueError, match="cache expected 2 layers"):
        m.prefill(m.embed_tokens(torch.tensor([[1, 2]])), pc.KVCache(3, 2, 16, 8))
    c = m.make_cache(4)
    with pytest.raises(ValueError, match="cache full: 5 new tokens at length 0 exceed capacity 4"):
        m.prefill(m.embed_tokens(torch.tensor([[1, 2, 3, 4, 5]])), c)
    m.prefill(m.embed_tokens(torch.tensor([[1, 2, 3]])), c)  # still usable after the rejected call
    assert c.length == 3
    with pytest.raises(ValueError, match="max_new_tokens expected >= 0"):
        m.greedy_generate(m.embed_tokens(torch.tensor([[1]])), m.make_cache(8), -1, [])
    with pytest.raises(ValueError, match="stop_token_ids expected ids in"):
        m.greedy_generate(m.embed_tokens(torch.tensor([[1]])), m.make_cache(8), 2, [10**6])
    with pytest.raises(TypeError, match="on_token expected a callable"):
        m.greedy_generate(m.embed_tokens(torch.tensor([[1]])), m.make_cache(8), 2, [], on_token=5)


def test_tokenizer_files_missing(tiny_model, tmp_path):
    from prospect_core.runners import StreamRunner

    d = copy_with(tiny_model, tmp_path)
    (d / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
        StreamRunner(d)
