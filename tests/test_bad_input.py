"""Every public entry point rejects bad arguments with an exception that names the argument, what was
expected and what was given; the objects involved keep working afterwards."""

import pytest
import torch

import prospect_core
import prospect_core as pc
from prospect_core.context_strategies import ContextStrategyFactory
from prospect_core.data import load_dataset
from prospect_core.evaluation import evaluate_dialogue

L, H, D = 2, 2, 8


@pytest.fixture(scope="module")
def objs(tiny_model):
    model = prospect_core.load_model(tiny_model)
    cache = pc.KVCache(L, H, D, 16)
    kv = lambda n: [torch.zeros(1, H, n, D) for _ in range(L)]  # noqa: E731
    cache.append(kv(4), kv(4), kind="system")
    from prospect_core.runners import StreamRunner

    runner = StreamRunner(
        tiny_model,
        max_seq_len=512,
        reserved_seq_len=64,
        max_new_tokens=4,
        context_strategy_config={"last_keep_len": 128},
    )
    return {
        "model": model,
        "cache": cache,
        "kv": kv,
        "runner": runner,
        "path": tiny_model,
        "mcache": model.make_cache(8),
        "e": model.embed_tokens(torch.tensor([[60, 61]])),
    }


def T(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


CASES = [
    # KVCache construction
    ("KVCache num_layers", lambda o: pc.KVCache(0, H, D, 8), ValueError, "num_layers expected > 0, got 0"),
    ("KVCache num_kv_heads", lambda o: pc.KVCache(L, 0, D, 8), ValueError, "num_kv_heads expected > 0, got 0"),
    ("KVCache head_dim", lambda o: pc.KVCache(L, H, 7, 8), ValueError, "head_dim expected a positive even"),
    ("KVCache capacity", lambda o: pc.KVCache(L, H, D, 0), ValueError, "capacity expected > 0, got 0"),
    ("KVCache batch", lambda o: pc.KVCache(L, H, D, 8, batch=0), ValueError, "batch expected > 0, got 0"),
    ("KVCache dtype name", lambda o: pc.KVCache(L, H, D, 8, dtype="int8"), ValueError, "got 'int8'"),
    ("KVCache dtype int", lambda o: pc.KVCache(L, H, D, 8, dtype=torch.int32), TypeError, "float64 .*got Int"),
    (
        "KVCache dtype float8",
        lambda o: pc.KVCache(L, H, D, 8, dtype=torch.float8_e4m3fn),
        TypeError,
        "got Float8_e4m3fn",
    ),
    ("KVCache device meta", lambda o: pc.KVCache(L, H, D, 8, device="meta"), ValueError, "got 'meta'"),
    ("KVCache device index", lambda o: pc.KVCache(L, H, D, 8, device="cpu:7"), ValueError, "got 'cpu:7'"),
    ("KVCache dtype type", lambda o: pc.KVCache(L, H, D, 8, dtype=5), TypeError, "dtype expected a torch.dtype"),
    ("KVCache device", lambda o: pc.KVCache(L, H, D, 8, device="gpu"), ValueError, "device expected 'cpu'"),
    ("KVCache rope_theta", lambda o: pc.KVCache(L, H, D, 8, rope_theta=-1.0), ValueError, "rope_theta expected > 0"),
    # KVCache methods
    ("append layers", lambda o: o["cache"].append(o["kv"](1)[:1], o["kv"](1)), ValueError, "one tensor per layer"),
    (
        "append shape",
        lambda o: o["cache"].append([T(1, H, 1, D + 1)] * L, o["kv"](1)),
        ValueError,
        r"keys\[0\] expected shape \[1, 2, 1, 8\]",
    ),
    (
        "append dtype",
        lambda o: o["cache"].append([T(1, H, 1, D, dtype=torch.float64)] * L, o["kv"](1)),
        TypeError,
        "expected dtype Float, got Double",
    ),
    ("append kind", lambda o: o["cache"].append(o["kv"](1), o["kv"](1), kind="photo"), ValueError, "got 'photo'"),
    ("append capacity", lambda o: o["cache"].append(o["kv"](13), o["kv"](13)), ValueError, "exceed capacity 16"),
    ("keys layer", lambda o: o["cache"].keys(5), IndexError, r"layer expected in \[0, 2\), got 5"),
    ("values layer", lambda o: o["cache"].values(-1), IndexError, "got -1"),
    ("pin id", lambda o: o["cache"].pin(77), IndexError, "span_id 77 is not a live span"),
    ("drop_middle keep", lambda o: o["cache"].drop_middle(-3), ValueError, "keep_last_tokens expected >= 0, got -3"),
    ("drop_middle mode", lambda o: o["cache"].drop_middle(4, position_mode="up"), ValueError, "got 'up'"),
    ("drop_spans id", lambda o: o["cache"].drop_spans([99]), IndexError, "span_id 99"),
    ("truncate length", lambda o: o["cache"].truncate(50), ValueError, r"length expected in \[0, 4\], got 50"),
    ("commit tokens", lambda o: o["cache"].commit(0), ValueError, "tokens expected the 0 tokens written"),
    ("commit unwritten", lambda o: o["cache"].commit(2), ValueError, "written since the last commit"),
    ("commit_extend unwritten", lambda o: o["cache"].commit_extend(1), ValueError, "written since the last commit"),
    ("write layer", lambda o: o["cache"].write(9, T(1, H, 1, D), T(1, H, 1, D)), IndexError, "got 9"),
    # RoPE, joint_embed, matching
    ("rope head_dim", lambda o: pc.rope_shift_(T(1, 3, 5), 1, 1e4), ValueError, "even head_dim, got 5"),
    ("rope dtype", lambda o: pc.rope_shift_(T(1, 3, 4, dtype=torch.int64), 1, 1e4), TypeError, "float64, got Long"),
    ("rope float8", lambda o: pc.rope_shift_(T(1, 3, 4).to(torch.float8_e5m2), 1, 1e4), TypeError, "got Float8_e5m2"),
    ("rope expanded", lambda o: pc.rope_shift_(T(1, 1, 4).expand(2, 3, 4), 1, 1e4), ValueError, "do not overlap"),
    ("rope delta type", lambda o: pc.rope_shift_(T(1, 3, 4), "1", 1e4), TypeError, "delta expected an int"),
    (
        "rope delta shape",
        lambda o: pc.rope_shift_(T(1, 3, 4), torch.zeros(2, dtype=torch.long), 1e4),
        ValueError,
        "T = 3",
    ),
    ("rope theta", lambda o: pc.rope_shift_(T(1, 3, 4), 1, 0.0), ValueError, "rope_theta expected > 0, got 0"),
    (
        "joint_embed ids rank",
        lambda o: pc.joint_embed(T(4, dtype=torch.long), T(1, 4, 8), T(0, 2, 8), 7),
        ValueError,
        r"input_ids expected \[B, T\]",
    ),
    (
        "joint_embed count",
        lambda o: pc.joint_embed(torch.full((1, 4), 7), T(1, 4, 8), T(1, 2, 8), 7),
        ValueError,
        "4 image tokens",
    ),
    (
        "joint_embed features",
        lambda o: pc.joint_embed(torch.full((1, 2), 7), T(1, 2, 8), T(1, 2, 4), 7),
        ValueError,
        r"image_features expected \[N, L, 8\]",
    ),
    ("matching rank", lambda o: pc.min_weight_full_matching(T(3)), ValueError, "cost expected [rows, cols]"),
    ("matching shape", lambda o: pc.min_weight_full_matching(T(3, 2)), ValueError, "rows <= cols, got 3 x 2"),
    ("matching dtype", lambda o: pc.min_weight_full_matching(T(2, 2, dtype=torch.long)), TypeError, "floating"),
    (
        "matching nan",
        lambda o: pc.min_weight_full_matching(torch.full((1, 1), float("nan"))),
        ValueError,
        "finite values or \\+inf",
    ),
    # transformers-cache surgery
    ("pkv type", lambda o: pc.drop_middle("cache", 1, 1), TypeError, "got str"),
    (
        "pkv keep_first",
        lambda o: pc.drop_middle(((T(1, 1, 4, 2), T(1, 1, 4, 2)),), -1, 1, rope_theta=1e4),
        ValueError,
        "keep_first expected >= 0, got -1",
    ),
    (
        "pkv rope_theta",
        lambda o: pc.drop_middle(((T(1, 1, 4, 2), T(1, 1, 4, 2)),), 1, 1),
        ValueError,
        "rope_theta expected",
    ),
    (
        "pkv float8",
        lambda o: pc.drop_middle(((T(1, 1, 4, 2).to(torch.float8_e4m3fn),) * 2,), 1, 1, rope_theta=1e4),
        TypeError,
        "got Float8_e4m3fn",
    ),
    (
        "pkv expanded",
        lambda o: pc.drop_middle(((T(1, 1, 1, 2).expand(1, 2, 4, 2),) * 2,), 1, 1, rope_theta=1e4),
        ValueError,
        "do not overlap",
    ),
    (
        "pkv rope_theta type",
        lambda o: pc.drop_middle(((T(1, 1, 4, 2),) * 2,), 1, 1, rope_theta="x"),
        TypeError,
        "rope_theta expected a number, got str",
    ),
    ("pkv lengths", lambda o: pc.drop_all(((T(1, 1, 4, 2), T(1, 1, 3, 2)),)), ValueError, "equal T"),
    # Loading
    ("load path", lambda o: prospect_core.load_model("/no/such/model"), FileNotFoundError, "no such folder"),
    (
        "load hf id",
        lambda o: prospect_core.load_model("someone/nothing"),
        FileNotFoundError,
        "huggingface-cli download",
    ),
    ("load dtype", lambda o: prospect_core.load_model(o["path"], dtype="fp8"), ValueError, "got 'fp8'"),
    ("load device", lambda o: prospect_core.load_model(o["path"], device="npu"), ValueError, "got 'npu'"),
    ("load file", lambda o: prospect_core.load_model(o["path"] / "config.json"), NotADirectoryError, "got the file"),
    # The engine
    (
        "embed vocab",
        lambda o: o["model"].embed_tokens(torch.tensor([[1, 9999]])),
        ValueError,
        r"token ids in \[0, 600\)",
    ),
    ("embed negative", lambda o: o["model"].embed_tokens(torch.tensor([[-1]])), ValueError, r"values in \[-1, -1\]"),
    ("embed float", lambda o: o["model"].embed_tokens(T(1, 2)), TypeError, "integer dtype"),
    ("embed rank", lambda o: o["model"].embed_tokens(torch.tensor([1, 2])), ValueError, r"input_ids expected \[B, T\]"),
    ("image size", lambda o: o["model"].image_features(T(1, 3, 32, 32)), ValueError, r"images of \[3, 64, 64\]"),
    ("image rank", lambda o: o["model"].image_features(T(3, 64, 64)), ValueError, "pixel_values expected [N"),
    (
        "image mask",
        lambda o: o["model"].image_features(T(1, 3, 64, 64), torch.ones(2, 64, 64)),
        ValueError,
        "pixel_attention_mask expected",
    ),
    (
        "image tokens no pixels",
        lambda o: o["model"].joint_embed(torch.tensor([[6, 6]])),
        ValueError,
        "2 image tokens but no pixel_values",
    ),
    ("prefill cache shape", lambda o: o["model"].prefill(o["e"], o["cache"]), ValueError, "use model.make_cache"),
    (
        "prefill full",
        lambda o: o["model"].prefill(o["model"].embed_tokens(torch.ones(1, 9, dtype=torch.long)), o["mcache"]),
        ValueError,
        "cache full: 9 new tokens",
    ),
    (
        "prefill embeds",
        lambda o: o["model"].prefill(T(1, 2, 5), o["mcache"]),
        ValueError,
        r"embeds expected \[B, T, 64\]",
    ),
    ("prefill kind", lambda o: o["model"].prefill(o["e"], o["mcache"], span_kind="x"), ValueError, "got 'x'"),
    (
        "generate max_new",
        lambda o: o["model"].greedy_generate(o["e"], o["mcache"], -1, []),
        ValueError,
        "max_new_tokens expected >= 0, got -1",
    ),
    (
        "generate stop",
        lambda o: o["model"].greedy_generate(o["e"], o["mcache"], 1, [600]),
        ValueError,
        "stop_token_ids expected ids",
    ),
    (
        "generate silence",
        lambda o: o["model"].greedy_generate(o["e"], o["mcache"], 1, [], silence=3),
        TypeError,
        "silence expected a \\(token_id, threshold\\) tuple",
    ),
    (
        "generate silence p",
        lambda o: o["model"].greedy_generate(o["e"], o["mcache"], 1, [], silence=(3, 2.0)),
        ValueError,
        "silence threshold expected in \\[0, 1\\], got 2",
    ),
    (
        "generate temperature",
        lambda o: o["model"].greedy_generate(o["e"], o["mcache"], 1, [], temperature=-1.0),
        ValueError,
        "temperature expected >= 0",
    ),
    (
        "generate temperature nan",
        lambda o: o["model"].greedy_generate(o["e"], o["mcache"], 1, [], temperature=float("nan")),
        ValueError,
        "temperature expected >= 0, got nan",
    ),
    (
        "prefill positions",
        lambda o: o["model"].prefill(
            o["model"].embed_tokens(torch.ones(1, 8193, dtype=torch.long)), o["model"].make_cache(8200)
        ),
        ValueError,
        r"positions 0..8192 exceed the model's max_position_embeddings \(8192\)",
    ),
    (
        "generate top_p",
        lambda o: o["model"].greedy_generate(o["e"], o["mcache"], 1, [], top_p=0.0),
        ValueError,
        r"top_p expected in \(0, 1\]",
    ),
    (
        "generate on_token",
        lambda o: o["model"].greedy_generate(o["e"], o["mcache"], 1, [], on_token=1),
        TypeError,
        "on_token expected a callable",
    ),
    (
        "generate batch",
        lambda o: o["model"].greedy_generate(T(2, 1, 64), o["mcache"], 1, []),
        ValueError,
        r"embeds expected \[1, T, H\]",
    ),
    # Frames
    ("preprocess shape", lambda o: pc.preprocess_frame(T(4, 4, dtype=torch.uint8), 8, 8), ValueError, "[H, W, 3]"),
    ("preprocess dtype", lambda o: pc.preprocess_frame(T(4, 4, 3), 8, 8), TypeError, "frame expected uint8"),
    (
        "preprocess sizes",
        lambda o: pc.preprocess_frame(T(4, 4, 3, dtype=torch.uint8), 0, 8),
        ValueError,
        "sizes expected > 0",
    ),
    (
        "preprocess resample",
        lambda o: pc.preprocess_frame(T(4, 4, 3, dtype=torch.uint8), 8, 8, resample="box"),
        ValueError,
        "resample expected 'lanczos' or 'bicubic', got 'box'",
    ),
    # Runner and strategies
    (
        "runner strategy",
        lambda o: ContextStrategyFactory.create_strategy("drop_some", 4096),
        ValueError,
        "strategy_type expected one of",
    ),
    (
        "strategy register",
        lambda o: ContextStrategyFactory.register("x", dict),
        TypeError,
        "strategy_cls expected a BaseContextStrategy subclass",
    ),
    (
        "strategy prompt",
        lambda o: ContextStrategyFactory.create_strategy("summarize_and_drop", 4096, summary_prompt=""),
        ValueError,
        "summary_prompt expected a non-empty string",
    ),
    (
        "strategy summary len",
        lambda o: ContextStrategyFactory.create_strategy(
            "summarize_and_drop", max_seq_len=64, reserved_seq_len=8, summary_max_length=64
        ),
        ValueError,
        "summary_max_length expected",
    ),
    (
        "strategy position",
        lambda o: ContextStrategyFactory.create_strategy("drop_middle", 4096, position_mode="left"),
        ValueError,
        "position_mode expected one of length, keep, shift, got 'left'",
    ),
    (
        "runner video type",
        lambda o: o["runner"].run_inference_on_video("video.mp4"),
        TypeError,
        "video_data expected a dict, got str",
    ),
    (
        "runner frames",
        lambda o: o["runner"].run_inference_on_video({"frames": [T(2, 2, 2)]}),
        ValueError,
        r"\['frames'\]\[0\] expected 3 colour channels",
    ),
    (
        "runner float range",
        lambda o: o["runner"].run_inference_on_video({"frames": [torch.full((4, 4, 3), 2.0)]}),
        ValueError,
        r"float pixels in \[0, 1\]",
    ),
    (
        "runner frame time inf",
        lambda o: o["runner"].add_frame(T(8, 8, 3, dtype=torch.uint8), 0, float("inf")),
        ValueError,
        "t expected seconds, a finite number >= 0, got inf",
    ),
    (
        "runner frame time nan",
        lambda o: o["runner"].add_frame(T(8, 8, 3, dtype=torch.uint8), 0, float("nan")),
        ValueError,
        "got nan",
    ),
    (
        "runner turn time inf",
        lambda o: o["runner"].run_inference_on_video(
            {"frames": [], "conversation": [{"role": "user", "time": float("inf"), "content": "hi"}]}
        ),
        ValueError,
        r"\['time'\] expected seconds",
    ),
    ("runner user turn time", lambda o: o["runner"].add_user_turn("hi", t=-3.0), ValueError, "got -3.0"),
    (
        "runner positions",
        lambda o: __import__("prospect_core.runners", fromlist=["x"]).StreamRunner(
            o["path"], max_seq_len=9000, reserved_seq_len=64, context_strategy_type="drop_all"
        ),
        ValueError,
        r"max_position_embeddings \(8192\), got 9000",
    ),
    (
        "runner context too small",
        lambda o: __import__("prospect_core.runners", fromlist=["x"]).StreamRunner(
            o["path"], max_seq_len=40, reserved_seq_len=4, max_new_tokens=8, context_strategy_type="drop_all"
        ),
        ValueError,
        "max_seq_len expected >= ",
    ),
    (
        "runner missing video",
        lambda o: o["runner"].run_inference_on_video({"video_path": "/no.avi"}),
        FileNotFoundError,
        "no such file: '/no.avi'",
    ),
    # Evaluation and data
    ("eval window", lambda o: evaluate_dialogue([], [], window=(-1,)), ValueError, "window expected"),
    (
        "eval predictions",
        lambda o: evaluate_dialogue("x", [], window=(-1, 1)),
        TypeError,
        "predictions expected a list",
    ),
    (
        "eval time",
        lambda o: evaluate_dialogue([{"time": -2, "text": "a"}], [], window=(-1, 1), text_metrics=False),
        ValueError,
        r"predictions\[0\]\['time'\] expected seconds >= 0",
    ),
    ("dataset path", lambda o: load_dataset("/no/data.json"), FileNotFoundError, "dataset /no/data.json not found"),
    ("make_model preset", lambda o: prospect_core.make_model("/tmp/x", "7b"), ValueError, "preset expected one of"),
    (
        "make_model section",
        lambda o: prospect_core.make_model("/tmp/x", "tiny", overrides={"nope.key": 1}),
        ValueError,
        "'nope' is not a config section",
    ),
]


def test_table_has_enough_cases():
    assert len(CASES) >= 85


@pytest.mark.parametrize("name, call, exc, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(objs, name, call, exc, fragment):
    with pytest.raises(exc) as e:
        call(objs)
    assert fragment in str(e.value) or __import__("re").search(fragment, str(e.value)), str(e.value)


def test_objects_still_work_after_the_errors(objs):
    """Runs after the table in file order: every object it hit is still usable."""
    c, m, kv = objs["cache"], objs["model"], objs["kv"]
    assert c.length == 4 and [s.kind for s in c.spans] == ["system"]
    c.append(kv(2), kv(2))
    c.drop_middle(2)  # keeps the newest whole span: the 2 tokens just appended
    assert c.length == 2 and [s.kind for s in c.spans] == ["other"]
    mc = objs["mcache"]
    assert mc.length == 0
    r = m.greedy_generate(objs["e"], mc, 3, [])
    assert len(r.tokens) == 3 and mc.length == 5
    out = objs["runner"].run_inference_on_video({"frames": [T(8, 8, 3, dtype=torch.uint8)] * 2})
    assert out["totals"]["frames_processed"] == 2
