"""SmolVLMWithStrategies: the original's model API on the native engine, against transformers."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, DynamicCache

from prospect_core.context_strategies import DropMiddleStrategy, cache_layers
from prospect_core.models import CustomSmolVLMProcessor, SmolVLMWithStrategies
from test_swap_in_strategies import reference_drop_middle


@pytest.fixture(scope="module")
def pair(tiny_model):
    hf = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    return (
        SmolVLMWithStrategies.from_pretrained(tiny_model, torch_dtype=torch.float32, device_map="cpu"),
        hf,
        CustomSmolVLMProcessor(AutoProcessor.from_pretrained(tiny_model)),
    )


def image(seed):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (40, 52, 3), dtype=np.uint8))


def dynamic(legacy):
    c = DynamicCache()
    for i, (k, v) in enumerate(legacy):
        c.update(k, v, i)
    return c


@torch.no_grad()
def reference_fast_greedy(hf, inputs, past, max_length, eos):
    """The original's loop on transformers: a forward over the prompt (and image), then one per token fed back
    as its embedding; stops after the end token, which is returned; the cache keeps all but the last token."""
    cache = dynamic(past) if past is not None else DynamicCache()
    out = hf(**inputs, past_key_values=cache, use_cache=True)
    tokens, tok = [], None
    for i in range(max_length):
        if i > 0:
            out = hf(inputs_embeds=hf.get_input_embeddings()(tok), past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        tokens.append(int(tok))
        if int(tok) == eos:
            break
    return tokens, tuple((k.clone(), v.clone()) for k, v in cache_layers(cache))


def close(ours, ref):
    got = cache_layers(ours)
    assert len(got) == len(ref)
    for (k, v), (rk, rv) in zip(got, ref):
        assert k.shape == rk.shape
        assert (k - rk).abs().max() < 1e-4 and (v - rv).abs().max() < 1e-4


def prompt_inputs(proc, turn, with_image=True):
    if not with_image:
        return {"input_ids": proc.tokenizer(f"Step {turn}: what now?", return_tensors="pt")["input_ids"]}
    inputs = proc(images=image(turn), text=f"<image>Step {turn}: what now?", return_tensors="pt")
    return {k: inputs[k] for k in ("input_ids", "pixel_values", "pixel_attention_mask")}


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text"])
def test_fast_greedy_generate_matches_transformers_across_turns_and_cuts(pair, with_image):
    ours, hf, proc = pair
    eos = ours.config.eos_token_id
    assert eos == hf.config.text_config.eos_token_id
    strategy = DropMiddleStrategy(max_seq_len=4096, last_keep_len=40 if with_image else 12)
    ref_cache = our_cache = ref_init = None
    lengths = []
    for turn in range(4):
        inputs = prompt_inputs(proc, turn, with_image)
        ids, our_cache = ours.fast_greedy_generate(ours.joint_embed(**inputs), our_cache, max_length=12)
        want, ref_cache = reference_fast_greedy(hf, inputs, ref_cache, 12, eos)
        assert ids[0].tolist() == want
        assert isinstance(our_cache, tuple)
        close(our_cache, ref_cache)
        if turn == 0:
            strategy.set_initial_cache(our_cache)
            ref_init = ref_cache
        elif turn < 3:  # the cut the original's runner makes before the next generation
            before = our_cache[0][0].shape[2]
            our_cache, _ = strategy.handle_overflow(our_cache, None)
            ref_cache = reference_drop_middle(ref_init, ref_cache, strategy.last_keep_len)
            close(our_cache, ref_cache)
            lengths.append((before, our_cache[0][0].shape[2]))
    init_len = ref_init[0][0].shape[2]
    assert all(after == init_len + strategy.last_keep_len < before for before, after in lengths)  # two real cuts


def test_the_end_token_is_returned_and_not_cached(pair):
    ours, hf, proc = pair
    inputs = prompt_inputs(proc, 11, with_image=False)
    free, _ = ours.fast_greedy_generate(ours.joint_embed(**inputs), None, max_length=8)
    eos = int(free[0, 3])  # as if the fourth greedy token were the end token
    k = free[0].tolist().index(eos)
    ids, cache = ours.fast_greedy_generate(ours.joint_embed(**inputs), None, max_length=8, eos_token_id=eos)
    want, ref = reference_fast_greedy(hf, inputs, None, 8, eos)
    assert ids[0].tolist() == want == free[0, : k + 1].tolist()  # stops at it, and returns it
    close(cache, ref)
    assert cache[0][0].shape[2] == inputs["input_ids"].shape[1] + k  # the end token itself is not cached


def test_an_older_tuple_is_copied_not_continued_in_place(pair):
    ours, _, proc = pair
    t1_ids, t1 = ours.fast_greedy_generate(ours.joint_embed(**prompt_inputs(proc, 1, False)), None, max_length=4)
    _, t2 = ours.fast_greedy_generate(ours.joint_embed(**prompt_inputs(proc, 2, False)), t1, max_length=4)
    assert t2[0][0].data_ptr() == t1[0][0].data_ptr()  # the latest tuple goes on in place
    t2_keys = t2[0][0].clone()
    ours.fast_greedy_generate(ours.joint_embed(**prompt_inputs(proc, 3, False)), t1, max_length=4)  # branch
    assert torch.equal(t2[0][0], t2_keys)  # what was handed out earlier did not change


def test_inputs_embeds_may_be_a_tensor_and_a_kvcache_is_continued_in_place(pair):
    ours, _, proc = pair
    inputs = prompt_inputs(proc, 5)
    a, _ = ours.fast_greedy_generate(ours.joint_embed(**inputs), None, max_length=6)
    embeds = ours.engine.joint_embed(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"])
    kv = ours.engine.make_cache(512)
    ptr = kv.storage.data_ptr()
    b, out = ours.fast_greedy_generate(embeds, kv, max_length=6)
    assert torch.equal(a, b) and out is kv and kv.storage.data_ptr() == ptr
    assert kv.length == inputs["input_ids"].shape[1] + b.shape[1] - 1  # the last token is not in the cache
    assert ours.joint_embed(input_ids=inputs["input_ids"]) == (inputs["input_ids"], None, {})
    with pytest.raises(TypeError, match="inputs_embeds expected"):
        ours.fast_greedy_generate("text", None)
    with pytest.raises(ValueError, match="max_length expected an int >= 1, got 0"):
        ours.fast_greedy_generate(embeds, None, max_length=0)


def test_generate_matches_transformers_generate(pair):
    ours, hf, proc = pair
    inputs = prompt_inputs(proc, 7)
    want = hf.generate(**inputs, max_new_tokens=10, do_sample=False)
    assert torch.equal(ours.generate(**inputs, max_new_tokens=10, do_sample=False), want)


def test_sampling_reaches_the_decoder(pair):
    ours, _, proc = pair
    embeds = ours.joint_embed(**prompt_inputs(proc, 9))
    greedy, _ = ours.fast_greedy_generate(embeds, None, max_length=10)
    s1, _ = ours.fast_greedy_generate(embeds, None, max_length=10, do_sample=True, temperature=1.5, seed=3)
    s2, _ = ours.fast_greedy_generate(embeds, None, max_length=10, do_sample=True, temperature=1.5, seed=3)
    assert torch.equal(s1, s2) and not torch.equal(s1, greedy)  # seeded, and really sampled
    # top_p this small keeps only the most likely token: sampling collapses to greedy.
    narrow, _ = ours.fast_greedy_generate(
        embeds, None, max_length=10, do_sample=True, temperature=1.5, top_p=1e-9, seed=3
    )
    assert torch.equal(narrow, greedy)
    with pytest.raises(ValueError, match="top_p expected a number in"):
        ours.fast_greedy_generate(embeds, None, do_sample=True, top_p=0)
    with pytest.raises(TypeError, match=r"unsupported generation arguments \['beams'\]"):
        ours.fast_greedy_generate(embeds, None, beams=2)


def test_processor_sequences_and_chat_formatter(pair):
    from prospect_core.utils.chat_formatter import ChatFormatter

    _, _, proc = pair
    ids, text = proc.get_input_sequence(2, [{"role": "system", "content": "Be brief."}])
    assert text == "System: Be brief.\n<image><image>"
    assert ids[0].tolist() == proc.tokenizer(text, add_special_tokens=False)["input_ids"]
    _, first = proc.get_input_sequence(0, [{"role": "user", "content": "Hi"}], first_turn=True)
    assert first == "<|im_start|>User: Hi<end_of_utterance>\nAssistant:"
    fmt = ChatFormatter(proc.tokenizer)
    # A plain string content is rendered (SmolVLM2's template alone would render it as nothing).
    assert fmt.format_system_message("The kettle is on.") == "<|im_start|>System: The kettle is on.<end_of_utterance>\n"
    assert proc.cleanup_text(" Assistant: Pour now.<end_of_utterance>") == ("Pour now.", "assistant")
    with pytest.raises(ValueError, match="num_images expected an int >= 0"):
        proc.get_input_sequence(-1, [])
