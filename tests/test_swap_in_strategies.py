"""The original pipeline's strategy API, mirrored: names, signatures, thresholds, and drop_middle bit for bit."""

import inspect

import pytest
import torch
from transformers import DynamicCache

import prospect_core as pc
from prospect_core.context_strategies import (
    BaseContextStrategy,
    ContextStrategy,
    ContextStrategyFactory,
    DropAllStrategy,
    DropMiddleStrategy,
    SummarizeAndDropStrategy,
    SummarizeWithDSTStrategy,
    load_strategy_config,
)
from prospect_core.context_strategies.context_strategy_factory import create_strategy

EMPTY = inspect.Parameter.empty
# (class, method, [(parameter, default)]) as the original declares them; "**" for its **kwargs / **context.
SIGNATURES = [
    (BaseContextStrategy, "__init__", [("max_seq_len", EMPTY), ("reserved_seq_len", 128), "**"]),
    (BaseContextStrategy, "handle_overflow", [("past_key_values", EMPTY), ("last_msg", EMPTY), "**"]),
    (BaseContextStrategy, "compress_cache", [("past_key_values", EMPTY), ("attention_mask", None), "**"]),
    (BaseContextStrategy, "should_reduce_cache", [("current_seq_len", EMPTY)]),
    (DropMiddleStrategy, "__init__", [("max_seq_len", EMPTY), ("reserved_seq_len", 128), ("last_keep_len", 512), "**"]),
    (DropMiddleStrategy, "set_initial_cache", [("past_key_values", EMPTY)]),
    (
        SummarizeAndDropStrategy,
        "__init__",
        [
            ("max_seq_len", EMPTY),
            ("reserved_seq_len", 128),
            ("summary_max_length", 512),
            ("summary_prompt", None),
            ("initial_sys_prompt", None),
            ("task_knowledge", None),
            "**",
        ],
    ),
    (
        SummarizeWithDSTStrategy,
        "__init__",
        [
            ("max_seq_len", EMPTY),
            ("reserved_seq_len", 128),
            ("summary_max_length", 256),
            ("dst_file", None),
            ("initial_sys_prompt", None),
            ("task_knowledge", None),
            "**",
        ],
    ),
    (
        ContextStrategyFactory,
        "create_strategy",
        [("strategy_type", EMPTY), ("max_seq_len", EMPTY), ("reserved_seq_len", 128), "**"],
    ),
]


@pytest.mark.parametrize("cls,method,expected", SIGNATURES, ids=lambda x: getattr(x, "__name__", None))
def test_signatures_match_the_original(cls, method, expected):
    params = [p for p in inspect.signature(getattr(cls, method)).parameters.values() if p.name != "self"]
    named = [x for x in expected if x != "**"]
    assert [(p.name, p.default) for p in params[: len(named)]] == named  # ours may add options after theirs
    assert (params[-1].kind == inspect.Parameter.VAR_KEYWORD) == ("**" in expected)


def test_factory_and_enum():
    assert [s.value for s in ContextStrategy] == ["drop_all", "drop_middle", "summarize_and_drop", "summarize_with_dst"]
    s = ContextStrategyFactory.create_strategy(strategy_type="drop_middle", max_seq_len=4096)
    assert (type(s), s.last_keep_len, s.reserved_seq_len, s.ctxlen_to_reduce) == (DropMiddleStrategy, 512, 128, 3968)
    s = create_strategy("summarize_and_drop", 4096)  # the factory's own default prompt, not the class's
    assert s.summary_prompt == "Summarize the task progress so far." and s.summary_max_length == 512
    assert create_strategy("summarize_with_dst", 4096).summary_max_length == 512
    with pytest.raises(ValueError, match="strategy_type expected one of"):
        create_strategy("drop_some", 4096)
    with pytest.raises(ValueError, match=r"unknown config keys \['keep_len'\]"):
        create_strategy("drop_middle", 4096, keep_len=3)


def test_threshold_is_at_or_above():
    s = DropAllStrategy(max_seq_len=4096, reserved_seq_len=128)
    assert not s.should_reduce_cache(3967) and s.should_reduce_cache(3968) and s.should_reduce_cache(5000)


def cache(T, layers=3, H=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(1, H, T, D, generator=g), torch.randn(1, H, T, D, generator=g)) for _ in range(layers))


def reference_drop_middle(init, cur, last_keep_len):
    """The original's documented behaviour, written out: snapshot + the last last_keep_len tokens (never
    reaching into the snapshot), concatenated; no snapshot or a short cache: unchanged."""
    if init is None:
        return cur
    T, n = cur[0][0].shape[2], init[0][0].shape[2]
    if T < last_keep_len:
        return cur
    start = max(T - last_keep_len, n)
    return tuple(
        (torch.cat([ik, k[:, :, start:]], 2), torch.cat([iv, v[:, :, start:]], 2))
        for (ik, iv), (k, v) in zip(init, cur)
    )


def as_kind(kind, pkv):
    if kind == "tuple":
        return tuple((k.clone(), v.clone()) for k, v in pkv)
    if kind == "dynamic":
        return (
            DynamicCache.from_legacy_cache(tuple((k.clone(), v.clone()) for k, v in pkv))
            if hasattr(DynamicCache, "from_legacy_cache")
            else _dynamic(pkv)
        )
    kv = pc.KVCache(len(pkv), pkv[0][0].shape[1], pkv[0][0].shape[3], 256)
    if pkv[0][0].shape[2]:
        kv.append([k for k, _ in pkv], [v for _, v in pkv], "frame")
    return kv


def _dynamic(pkv):
    c = DynamicCache()
    for i, (k, v) in enumerate(pkv):
        c.update(k.clone(), v.clone(), i)
    return c


def layers_of(c):
    from prospect_core.context_strategies import cache_layers

    return cache_layers(c)


@pytest.mark.parametrize("kind", ["tuple", "dynamic", "kvcache"])
@pytest.mark.parametrize(
    "init_len,cur_len,keep", [(5, 40, 12), (5, 14, 12), (30, 40, 12), (5, 10, 12), (0, 40, 12), (5, 40, 0)]
)
def test_drop_middle_is_bit_identical_to_the_original(kind, init_len, cur_len, keep):
    first = cache(init_len, seed=1)
    grown = cache(cur_len, seed=2)
    # As in the original's flow, the current cache starts with the initial one (the snapshot was taken from it).
    grown = tuple(
        (torch.cat([ik, k[:, :, init_len:]], 2), torch.cat([iv, v[:, :, init_len:]], 2))
        for (ik, iv), (k, v) in zip(first, grown)
    )
    expect = reference_drop_middle(first, grown, keep)
    s = DropMiddleStrategy(max_seq_len=64, reserved_seq_len=8, last_keep_len=keep)
    s.set_initial_cache(as_kind(kind, first))
    out, msg = s.handle_overflow(as_kind(kind, grown), "last")
    assert msg == "last"
    got = layers_of(out)
    assert len(got) == len(expect)
    for (k, v), (ek, ev) in zip(got, expect):
        assert torch.equal(k, ek) and torch.equal(v, ev)
    if kind == "kvcache" and expect is not grown:
        assert out.next_position == out.length  # the next token takes position = cache length


def test_drop_middle_takes_the_snapshot_not_the_current_head():
    # The original keeps the snapshot's tensors; when the cache's head differs from it, the snapshot wins.
    init, cur = cache(6, seed=3), cache(50, seed=4)
    s = DropMiddleStrategy(max_seq_len=4096, last_keep_len=20)
    s.set_initial_cache(init)
    out, _ = s.handle_overflow(tuple((k.clone(), v.clone()) for k, v in cur), None)
    for (k, v), (ek, ev) in zip(out, reference_drop_middle(init, cur, 20)):
        assert torch.equal(k, ek) and torch.equal(v, ev)


def test_drop_middle_no_snapshot_leaves_the_cache():
    cur = cache(40)
    s = DropMiddleStrategy(max_seq_len=4096, last_keep_len=8)
    assert s.handle_overflow(cur, "m") == (cur, "m")


def test_drop_middle_cuts_in_place_and_masks_match():
    cur = cache(30)
    s = DropMiddleStrategy(max_seq_len=32, reserved_seq_len=4, last_keep_len=10)
    s.set_initial_cache(tuple((k[:, :, :4], v[:, :, :4]) for k, v in cur))
    mask = torch.arange(33).view(1, 33)  # the cache's 30 columns, then 3 for the new input
    out, new_mask = s.compress_cache(cur, mask)
    assert out[0][0].data_ptr() == cur[0][0].data_ptr()  # compacted inside the caller's tensors
    assert new_mask.tolist() == [[0, 1, 2, 3] + list(range(20, 33))]
    # drop_all empties the cache; as the original, the mask is then the caller's business.
    assert DropAllStrategy(max_seq_len=32, reserved_seq_len=4).compress_cache(cache(30), mask) == (None, mask)


def test_summary_prompt_may_be_the_dictconfig_the_original_evaluator_passes():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(YAML["summarize_and_drop.yaml"])
    config = dict(cfg)  # what their evaluator does: dict() of the strategy's node, nested nodes stay DictConfig
    config.pop("type")
    s = create_strategy("summarize_and_drop", 4096, **config)
    assert s.summary_prompt == {"role": "system", "content": "Please summarize the progress."}


def test_kvcache_token_cut_splits_spans_and_keeps_the_ledger_consistent():
    kv = pc.KVCache(2, 2, 8, 64)
    for n, kind in ((5, "system"), (10, "frame"), (10, "frame"), (6, "assistant")):
        kv.append([torch.randn(1, 2, n, 8)] * 2, [torch.randn(1, 2, n, 8)] * 2, kind)
    before = kv.keys(0).clone()
    dropped = kv.drop_range(8, 20, position_mode="length")
    assert dropped == 12 and kv.length == 19 and kv.next_position == 19
    assert torch.equal(kv.keys(0), torch.cat([before[:, :, :8], before[:, :, 20:]], 2))
    spans = [(s.kind, s.start, s.end, s.first_position) for s in kv.spans]
    assert spans == [("system", 0, 5, 0), ("frame", 5, 8, 5), ("frame", 8, 13, 20), ("assistant", 13, 19, 25)]
    with pytest.raises(ValueError, match=r"expected 0 <= start <= end <= 19"):
        kv.drop_range(10, 30)


def test_drop_all_returns_none_and_empties_a_kvcache():
    s = DropAllStrategy(max_seq_len=4096)
    assert s.handle_overflow(cache(10), "m") == (None, "m")
    kv = as_kind("kvcache", cache(10))
    assert s.handle_overflow(kv, None) == (None, None) and kv.length == 0


def test_summarize_strategies_take_a_summarizer_and_keep_the_summary():
    calls = []
    s = SummarizeAndDropStrategy(
        max_seq_len=4096,
        summary_prompt={"role": "system", "content": "Sum it up."},
        initial_sys_prompt="You help.",
        task_knowledge="Tea needs water.",
    )

    def summarize(text, n):
        calls.append((text, n))
        return "Assistant: The water is boiling."

    class Formatter:
        def apply_chat_template(self, messages):
            return "<" + messages[0]["role"] + ">" + messages[0]["content"]

    kv = as_kind("kvcache", cache(10))
    out, msg = s.handle_overflow(
        kv, None, summarize=summarize, chat_formatter=Formatter(), frame_idx=7, current_timestamp=3.5
    )
    assert out is None and kv.length == 0
    assert calls == [("You help. Sum it up. Tea needs water.", 512)]
    assert msg == "<system>The water is boiling."
    assert s.summaries == [{"frame_index": 7, "time": 3.5, "text": "The water is boiling."}]
    with pytest.raises(ValueError, match=r"missing \['chat_formatter', 'model', 'processor'\]"):
        s.handle_overflow(cache(4), None)


def test_summarize_with_dst_puts_the_task_state_in_the_request(tmp_path):
    tsv = tmp_path / "dst.tsv"
    tsv.write_text(
        "type\tname\tstart_ts\tend_ts\nSTEP\tBoil water\t0\t10\nSUBSTEP\tFill kettle\t0\t4\nSTEP\tSteep tea\t10.5\t20\n"
    )
    s = SummarizeWithDSTStrategy(max_seq_len=4096, dst_file=str(tsv))
    seen = []
    s.handle_overflow(cache(4), None, summarize=lambda text, n: seen.append(text) or "ok", current_timestamp=2.0)
    assert "now: Boil water" in seen[0] and "(substep: Fill kettle)" in seen[0] and "next: Steep tea." in seen[0]
    # The video's own annotations (the runner passes them) take precedence over the file.
    s.handle_overflow(
        cache(4),
        None,
        summarize=lambda text, n: seen.append(text) or "ok",
        current_timestamp=12.0,
        dst_annotations=[{"type": "STEP", "name": "Pour", "start_ts": 11, "end_ts": 13}],
    )
    assert "now: Pour" in seen[1]
    # A video without annotations (the runner passes none) leaves the file's.
    s.handle_overflow(
        cache(4), None, summarize=lambda text, n: seen.append(text) or "ok", current_timestamp=12.0, dst_annotations=[]
    )
    assert "now: Steep tea" in seen[2]
    with pytest.raises(FileNotFoundError, match="dst_file: no such file"):
        SummarizeWithDSTStrategy(max_seq_len=4096, dst_file=str(tmp_path / "none.tsv"))


YAML = {
    "none.yaml": "type: none\n",
    "drop_all.yaml": "# all of it\ntype: drop_all\n",
    "drop_middle.yaml": "type: drop_middle\nlast_keep_len: 256\n",
    "summarize_and_drop.yaml": (
        "type: summarize_and_drop\nsummary_max_length: 128\nsummary_prompt:\n"
        '  role: "system"\n  content: "Please summarize the progress."\n'
    ),
    "summarize_with_dst.yaml": (
        "type: summarize_with_dst\nsummary_max_length: 64\n"
        "dst_file: ${data.dst_annotation_path}/dst.tsv\n"
        "summary_prompt:\n  role: system\n  content: Track the task.\n"
        "initial_sys_prompt: You are a proactive assistant.\n"
        "task_knowledge: Assemble in order.\n"
    ),
}


def test_yaml_configs_load_as_the_original_evaluator_reads_them(tmp_path):
    for name, text in YAML.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "dst.tsv").write_text("type\tname\tstart_ts\tend_ts\nSTEP\tA\t0\t5\n")
    assert load_strategy_config(tmp_path / "none.yaml") == ("none", {})
    assert type(ContextStrategyFactory.from_yaml(tmp_path / "drop_all.yaml", 4096)) is DropAllStrategy
    assert ContextStrategyFactory.from_yaml(tmp_path / "drop_middle.yaml", 4096).last_keep_len == 256
    s = ContextStrategyFactory.from_yaml(tmp_path / "summarize_and_drop.yaml", 4096)
    assert s.summary_prompt == {"role": "system", "content": "Please summarize the progress."}
    assert s.summary_request() == "Please summarize the progress."
    with pytest.raises(ValueError, match=r"\$\{data.dst_annotation_path\} is a Hydra interpolation"):
        load_strategy_config(tmp_path / "summarize_with_dst.yaml")
    d = ContextStrategyFactory.from_yaml(
        tmp_path / "summarize_with_dst.yaml", 4096, variables={"data.dst_annotation_path": str(tmp_path)}
    )
    assert d.summary_max_length == 64 and d.dst_annotations[0]["name"] == "A"
    (tmp_path / "bad.yaml").write_text("type: drop_middle\nlast_keep: 5\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown keys \['last_keep'\] for drop_middle"):
        load_strategy_config(tmp_path / "bad.yaml")
