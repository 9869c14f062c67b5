"""Quantized weights (weights="int8" and "gguf"): the decoder's formats against gguf-py's reference
implementation, each kernel this CPU runs against the math written out, the vision tower's int8
products against theirs, and the engine against its own fp32 path. The 256m-smollm2 checkpoint's GGUF
blocks are tested in test_smollm2.py."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

import prospect_core
from prospect_core import _C
from prospect_core.config import RunnerConfig
from stream_fixtures import small_runner, video

KERNELS = ["generic", "avx2", "avx512_vnni"]


def kernels_here():
    """The kernels this CPU runs (forcing one it lacks raises)."""
    here = []
    for k in KERNELS:
        try:
            _C._force_quant_kernel(k)
            here.append(k)
        except ValueError:
            pass
    _C._force_quant_kernel("")
    return here


@pytest.fixture
def kernel(request):
    _C._force_quant_kernel(request.param)
    yield request.param
    _C._force_quant_kernel("")


def quantized_activations(x: np.ndarray) -> np.ndarray:
    """x as the products see it: each block of 32 as d * round(x / d), d = max|x| / 127."""
    b = x.reshape(*x.shape[:-1], -1, 32).astype(np.float32)
    d = np.abs(b).max(-1, keepdims=True) / np.float32(127)
    q = np.rint(b / np.where(d > 0, d, 1)).astype(np.float32)
    return (q * d).reshape(x.shape)


def q4_1_blocks(rows, cols, seed=0):
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    return torch.from_numpy(quantize(w, GGMLQuantizationType.Q4_1).copy())


def test_q8_0_bytes_are_gguf_references():
    w = torch.randn(33, 576)
    ours = _C._quantize_q8_0(w)
    assert ours.dtype == torch.uint8 and ours.shape == (33, 576 // 32 * 34)
    np.testing.assert_array_equal(ours.numpy(), quantize(w.numpy(), GGMLQuantizationType.Q8_0))


@pytest.mark.parametrize("kind", ["q8_0", "q4_1"])
def test_dequantize_is_gguf_reference(kind):
    w = np.random.default_rng(1).standard_normal((9, 1536)).astype(np.float32)
    qtype = GGMLQuantizationType.Q8_0 if kind == "q8_0" else GGMLQuantizationType.Q4_1
    blocks = quantize(w, qtype)
    got = _C._dequantize(torch.from_numpy(blocks.copy()), kind, 1536)
    np.testing.assert_array_equal(got.numpy(), dequantize(blocks, qtype))


@pytest.mark.parametrize("kernel", kernels_here(), indirect=True)
@pytest.mark.parametrize("kind", ["q8_0", "q4_1"])
@pytest.mark.parametrize(
    "rows,cols,tokens", [(7, 32, 1), (64, 576, 1), (13, 1536, 5), (960, 576, 3), (40, 576, 13), (9, 64, 84)]
)
def test_each_kernel_computes_the_product(kernel, kind, rows, cols, tokens):
    qtype = GGMLQuantizationType.Q8_0 if kind == "q8_0" else GGMLQuantizationType.Q4_1
    w = np.random.default_rng(rows).standard_normal((rows, cols)).astype(np.float32)
    blocks = quantize(w, qtype)
    x = torch.randn(tokens, cols) * torch.linspace(0.1, 4, cols)  # blocks of different scales
    got = _C._quant_linear(x, torch.from_numpy(blocks.copy()), kind, cols)
    want = quantized_activations(x.numpy()).astype(np.float64) @ dequantize(blocks, qtype).T.astype(np.float64)
    assert got.shape == (tokens, rows)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.skipif("avx512_vnni" not in kernels_here(), reason="this CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("kind", ["q8_0", "q4_1"])
def test_vnni_prefill_tiles_give_avx2s_exact_results(kind):
    """VNNI's prefill passes take 8 or 4 tokens at a time, with Q8_0's weights made unsigned; the integer
    dots and the float steps after them are AVX2's, so every token count gives the same bits."""
    qtype = GGMLQuantizationType.Q8_0 if kind == "q8_0" else GGMLQuantizationType.Q4_1
    w = np.random.default_rng(3).standard_normal((70, 576)).astype(np.float32)
    blocks = torch.from_numpy(quantize(w, qtype).copy())
    x = torch.randn(29, 576) * torch.linspace(0.1, 4, 576)
    x[3] = 0  # an all-zero token: scale 0
    for tokens in (1, 2, 4, 7, 8, 12, 13, 29):
        got = {}
        for k in ("avx2", "avx512_vnni"):
            _C._force_quant_kernel(k)
            got[k] = _C._quant_linear(x[:tokens], blocks, kind, 576)
        _C._force_quant_kernel("")
        assert torch.equal(got["avx2"], got["avx512_vnni"]), tokens


def test_kernel_is_named():
    assert _C.quant_kernel() in KERNELS
    assert _C.quant_kernel() == kernels_here()[-1] or _C.quant_kernel() == kernels_here()[0]
    with pytest.raises(ValueError, match="sse9"):
        _C._force_quant_kernel("sse9")


def test_bad_blocks_are_refused():
    wrong_width = r"blocks expected uint8 \[rows, 34\] on the CPU for 32 columns of q8_0, got Byte \[2, 20\]"
    with pytest.raises(ValueError, match=wrong_width):
        _C._quant_linear(torch.randn(1, 32), torch.zeros(2, 20, dtype=torch.uint8), "q8_0", 32)
    with pytest.raises(ValueError, match="type expected 'q8_0' or 'q4_1', got 'q5_0'"):
        _C._dequantize(torch.zeros(2, 22, dtype=torch.uint8), "q5_0", 32)
    with pytest.raises(ValueError, match="quantized weights expected fp32 CPU input"):
        _C._quant_linear(torch.randn(1, 64), q4_1_blocks(2, 32), "q4_1", 32)


@pytest.fixture(scope="module")
def int8_pair(tiny_model):
    return prospect_core.load_model(tiny_model), prospect_core.load_model(tiny_model, weights="int8")


def test_int8_holds_fewer_bytes_and_says_so(int8_pair):
    dense, q = int8_pair
    assert (dense.weights, q.weights) == ("dense", "int8")
    t, v = dense.config["text_config"], dense.config["vision_config"]
    # Every decoder matrix and lm_head at 34 bytes per 32 weights instead of 128; the vision products (the
    # patch embedding's, four a layer) at one byte a weight and 4 per output row (its scale) instead of 4 a
    # weight; the connector at 2 bytes a weight on a CPU that multiplies bf16; the rest unchanged.
    d, i = v["hidden_size"], v["intermediate_size"]
    vision_weights = v["num_hidden_layers"] * (4 * d * d + 2 * d * i) + d * v["num_channels"] * v["patch_size"] ** 2
    vision_rows = v["num_hidden_layers"] * (3 * d + d + i + d) + d
    connector = t["hidden_size"] * d * dense.config["scale_factor"] ** 2 * (2 if _C._cpu_has_bf16_dot() else 0)
    matrices = (
        t["num_hidden_layers"]
        * (
            t["hidden_size"] * t["head_dim"] * (2 * t["num_attention_heads"] + 2 * t["num_key_value_heads"])
            + 3 * t["hidden_size"] * t["intermediate_size"]
        )
        + t["vocab_size"] * t["hidden_size"]
    )
    assert (
        dense.weight_bytes - q.weight_bytes
        == matrices * 4
        - matrices * 34 // 32
        - (0 if not dense.config.get("tie_word_embeddings") else t["vocab_size"] * t["hidden_size"] * 4)
        + (vision_weights * 3 - vision_rows * 4)
        + connector
    )


@torch.no_grad()
def test_int8_logits_and_greedy_tokens_near_fp32(int8_pair):
    dense, q = int8_pair
    for seed in range(3):
        text = torch.randint(40, 200, (1, 12), generator=torch.Generator().manual_seed(seed))
        ld = dense.prefill(dense.embed_tokens(text), dense.make_cache(64), "user")
        lq = q.prefill(q.embed_tokens(text), q.make_cache(64), "user")
        assert ((lq - ld).norm() / ld.norm()).item() < 0.03  # measured 1.0-1.2%
        a = dense.greedy_generate(dense.embed_tokens(text), dense.make_cache(64), 32, []).tokens
        b = q.greedy_generate(q.embed_tokens(text), q.make_cache(64), 32, []).tokens
        assert a[:8] == b[:8]  # measured: the first 19, 21 and 32 agree


@torch.no_grad()
def test_int8_decode_steps_equal_one_prefill(int8_pair):
    """The decode loop (one token at a time, raw loops) and a prefill of the same tokens (all at once)
    quantize each token's activations alike, so their logits agree to float rounding."""
    _, q = int8_pair
    text = torch.randint(40, 200, (1, 6))
    whole = q.forward(q.embed_tokens(text), q.make_cache(16))[0]  # every position's logits
    cache = q.make_cache(16)
    steps = torch.cat([q.prefill(q.embed_tokens(text[:, i : i + 1]), cache, "user") for i in range(6)])
    torch.testing.assert_close(steps, whole, rtol=1e-4, atol=1e-4)


def int8_gemm_reference(x, w, bias):
    """The vision tower's int8 product written out in float64: w per row (symmetric, max|w| / top, top 127
    with VNNI and 63 without), x per row (symmetric, max|x| / 127), integer dots, then both scales."""
    top = _C._int8_gemm_weight_max()
    sw = (w.abs().amax(1) / top).clamp_min(1e-12)
    qw = torch.round(w / sw[:, None]).clamp(-top, top)
    sx = x.abs().amax(1, keepdim=True) / 127
    qx = torch.floor(x * (1 / sx) + 0.5)
    dots = qx.double() @ qw.double().T
    return (dots * sx.double() * sw.double() + (0 if bias is None else bias.double())).float()


@pytest.mark.parametrize("rows,cols,out,bias", [(1024, 64, 192, True), (37, 128, 40, False), (3, 96, 256, True)])
def test_int8_gemm_is_the_math_written_out(rows, cols, out, bias):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, cols, generator=g) * 2 + 0.3  # off-centre: the zero point matters
    w = torch.randn(out, cols, generator=g) * 0.05
    b = torch.randn(out, generator=g) if bias else None
    got = _C._int8_gemm(x, w, b)
    want = int8_gemm_reference(x, w, b)
    # One quantization step apart where x * (1/s) + zero lands on a tie that fp32 rounds the other way.
    assert ((got - want).norm() / want.norm()).item() < 1e-4
    exact = torch.nn.functional.linear(x, w, b)
    assert 0 < ((got - exact).norm() / exact.norm()).item() < 0.03  # quantized, and close


def test_int8_gemm_arguments_are_checked():
    with pytest.raises(ValueError, match=r"expected fp32 \[M, 64\] input on the CPU, got Float \[4, 32\]"):
        _C._int8_gemm(torch.randn(4, 32), torch.randn(8, 64))
    with pytest.raises(ValueError, match="expected an fp32 \\[out, in\\] weight on the CPU, got Double"):
        _C._int8_gemm(torch.randn(4, 64), torch.randn(8, 64, dtype=torch.float64))


def attention_reference(q, k, v, key_mask, scale):
    """The attention in float64, [N, S, heads, hd]."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    return (scores.softmax(-1) @ v.double()).transpose(1, 2)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(
    "n,heads,s,hd,masked",
    [(1, 4, 264, 32, False), (2, 3, 257, 16, True), (1, 2, 7, 8, False), (2, 2, 40, 8, True), (2, 2, 33, 20, True)],
)
def test_quantized_attention_is_attention(n, heads, s, hd, masked, fused):
    """The int8 tower's attention on bf16 CPUs, in ATen's products or prospect's fused ones: blocks of
    queries that 264, 257, 33 and 7 leave short, key counts and head sizes that are and are not whole
    vectors of 16, padded keys masked, the result fp32 [N, S, heads, hd]; int8 scores and bf16 weights,
    within 2% of float64's attention. Keys that share a large offset (which a softmax ignores) are centred
    before they are quantized, so they lose nothing; the qkv product's permuted views give what contiguous
    tensors give. A CPU without the fused kernels refuses fused=True by name."""
    g = torch.Generator().manual_seed(s)
    qkv = torch.randn(n, s, 3, heads, hd, generator=g).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    mask = None
    if masked:
        mask = torch.ones(n, 1, 1, s, dtype=torch.bool)
        mask[1, ..., s // 3 :] = False
    scale = hd**-0.5
    if fused and not _C._quantized_attention_fused():
        with pytest.raises(ValueError, match="fused=True expected a CPU with AVX512_VNNI and AVX512_BF16"):
            _C._quantized_attention(q, k, v, mask, scale, fused=True)
        return
    got = _C._quantized_attention(q, k, v, mask, scale, fused=fused)
    assert got.dtype == torch.float32 and got.shape == (n, s, heads, hd)
    want = attention_reference(q, k, v, mask, scale)
    err = ((got.double() - want).norm() / want.norm()).item()
    assert 0 < err < 0.02, err  # quantized, and close
    assert torch.equal(
        _C._quantized_attention(q.contiguous(), k.contiguous(), v.contiguous(), mask, scale, fused=fused), got
    )
    offset = 20 * torch.randn(hd, generator=g)  # 20x the keys' own size
    shifted = _C._quantized_attention(q, k + offset, v, mask, scale, fused=fused)
    assert ((shifted.double() - want).norm() / want.norm()).item() < 0.02
    if masked:  # a padded key changes nothing: perturbing it leaves the result as it was
        v2 = v.clone()
        v2[1, :, s - 1] += 100
        assert torch.equal(_C._quantized_attention(q, k, v2, mask, scale, fused=fused), got)


@pytest.mark.skipif(not _C._quantized_attention_fused(), reason="the fused kernels need AVX512_VNNI and AVX512_BF16")
def test_fused_attention_matches_atens_products():
    """The fused products compute the same int8 scores and bf16 weights as ATen's: the results part only
    where ATen rounds each weighted sum to bf16 before dividing it, so by about bf16's rounding, and the
    fused sums (not rounded) are at least as near float64's. Heads wider than the fused kernels hold (80)
    take ATen's products whatever is asked."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 3, 300, 64, generator=g)
    fused = _C._quantized_attention(q, k, v, None, 0.125, fused=True)
    aten = _C._quantized_attention(q, k, v, None, 0.125, fused=False)
    want = attention_reference(q, k, v, None, 0.125)
    assert 0 < ((fused - aten).norm() / aten.norm()).item() < 4e-3
    err = lambda x: ((x.double() - want).norm() / want.norm()).item()  # noqa: E731
    assert err(fused) <= err(aten)
    q, k, v = torch.randn(3, 1, 2, 40, 80, generator=g)
    assert torch.equal(
        _C._quantized_attention(q, k, v, None, 0.1, fused=True),
        _C._quantized_attention(q, k, v, None, 0.1, fused=False),
    )


# A prefill's shapes: 84 tokens over 0 to 2,000 cached keys, 9 heads over 3 KV heads as in 256m; blocks of
# 4 queries that 7 and 13 leave short; key counts and head sizes that are and are not whole vectors (and
# odd: the bf16 path takes keys in pairs); one query over two tiles; 1,015 cached keys, a short last tile.
CAUSAL_CASES = [
    (84, 0, 9, 3, 64, 100),
    (84, 420, 9, 3, 64, 600),
    (7, 5, 4, 4, 12, 12),
    (1, 30, 2, 1, 8, 40),
    (1, 30, 2, 1, 64, 40),
    (5, 0, 2, 1, 32, 5),
    (13, 0, 6, 2, 20, 13),
    (84, 2000, 9, 3, 64, 2100),
    (13, 1015, 6, 2, 20, 1030),
    (13, 1015, 6, 2, 32, 1030),
]


def causal_case(tokens, first, heads, kv_heads, hd, capacity, causal=True):
    """Random q [tokens, heads, hd], k and v [kv_heads, capacity, hd], and float64's attention for them:
    query t sees keys 0..first+t (not causal: all first + tokens), heads share their KV head in groups;
    [tokens, heads * hd]."""
    g = torch.Generator().manual_seed(tokens + first + hd)
    q = torch.randn(tokens, heads, hd, generator=g)
    k, v = (torch.randn(kv_heads, capacity, hd, generator=g) for _ in range(2))
    keys, rep = first + tokens, heads // kv_heads
    kk, vv = k[:, :keys].repeat_interleave(rep, 0), v[:, :keys].repeat_interleave(rep, 0)  # [heads, keys, hd]
    seen = torch.arange(keys).unsqueeze(0) <= (first + torch.arange(tokens)).unsqueeze(1)  # [tokens, keys]
    if not causal:
        seen = torch.ones_like(seen)
    want = attention_reference(q.transpose(0, 1).unsqueeze(0), kk.unsqueeze(0), vv.unsqueeze(0), seen, hd**-0.5)
    return q, k, v, want[0].reshape(tokens, heads * hd)


@pytest.mark.parametrize("tokens,first,heads,kv_heads,hd,capacity", CAUSAL_CASES)
def test_causal_attention_is_attention(tokens, first, heads, kv_heads, hd, capacity):
    """A prefill's attention in plain loops, fp32: float64's to rounding; cache rows past first + tokens
    are ignored."""
    q, k, v, want = causal_case(tokens, first, heads, kv_heads, hd, capacity)
    got = _C._causal_attention(q, k, v, first, hd**-0.5)
    assert got.shape == (tokens, heads * hd)
    assert torch.allclose(got.double(), want, atol=2e-6, rtol=1e-5)
    k2 = k.clone()
    k2[:, first + tokens :] = 1e6  # rows the cache has not filled change nothing
    assert torch.equal(_C._causal_attention(q, k2, v, first, hd**-0.5), got)


@pytest.mark.parametrize("tokens,first,heads,kv_heads,hd,capacity", CAUSAL_CASES)
def test_causal_attention_in_bf16(tokens, first, heads, kv_heads, hd, capacity):
    """bf16=True (the prefill of a model with quantized weights): on a CPU with AVX512_BF16 and a head_dim
    of 32 or 64, queries, keys, weights and values are rounded to bf16 and summed in fp32, within 1% of
    float64's attention; cache rows past first + tokens still count for nothing. Elsewhere it is the fp32
    attention, exactly."""
    q, k, v, want = causal_case(tokens, first, heads, kv_heads, hd, capacity)
    got = _C._causal_attention(q, k, v, first, hd**-0.5, True)
    if not (_C._cpu_has_bf16_dot() and hd in (32, 64)):
        assert torch.equal(got, _C._causal_attention(q, k, v, first, hd**-0.5))
        return
    err = ((got.double() - want).norm() / want.norm()).item()
    assert 1e-4 < err < 0.01, err  # rounded, and close
    k2, v2 = k.clone(), v.clone()
    k2[:, first + tokens :], v2[:, first + tokens :] = 1e6, 1e6
    assert torch.equal(_C._causal_attention(q, k2, v2, first, hd**-0.5, True), got)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tokens,first,heads,kv_heads,hd,capacity", [(64, 0, 4, 4, 64, 64), (37, 5, 6, 2, 32, 50)])
def test_attention_not_causal(tokens, first, heads, kv_heads, hd, capacity, bf16):
    """causal=False (a bf16 vision tower's attention): every query sees all first + tokens keys, and the
    rows past them still count for nothing. fp32 to rounding; bf16 (where it applies) within 1%."""
    q, k, v, want = causal_case(tokens, first, heads, kv_heads, hd, capacity, causal=False)
    got = _C._causal_attention(q, k, v, first, hd**-0.5, bf16, causal=False)
    causal = _C._causal_attention(q, k, v, first, hd**-0.5, bf16)
    assert not torch.allclose(got, causal, atol=1e-3)  # the early queries see more keys
    err = ((got.double() - want).norm() / want.norm()).item()
    assert err < (0.01 if bf16 and _C._cpu_has_bf16_dot() else 1e-6), err
    k2, v2 = k.clone(), v.clone()
    k2[:, first + tokens :], v2[:, first + tokens :] = 1e6, 1e6
    assert torch.equal(_C._causal_attention(q, k2, v2, first, hd**-0.5, bf16, causal=False), got)


def test_causal_attention_arguments_are_checked():
    q, k = torch.randn(5, 4, 8), torch.randn(2, 10, 8)
    with pytest.raises(
        ValueError, match=r"first \+ T <= capacity, got \[5, 4, 8\], \[2, 10, 8\], \[2, 10, 8\], first 6"
    ):
        _C._causal_attention(q, k, k, 6, 0.5)
    with pytest.raises(ValueError, match="heads a multiple of kv_heads"):
        _C._causal_attention(torch.randn(5, 3, 8), k, k, 0, 0.5)


def test_quantized_attention_arguments_are_checked():
    q = torch.randn(2, 2, 8, 4)
    with pytest.raises(ValueError, match=r"expected q, k, v of one shape \[N, heads, S, hd\]"):
        _C._quantized_attention(q, torch.randn(2, 2, 9, 4), q, None, 0.5)
    with pytest.raises(ValueError, match=r"expected key_mask bool \[2, 1, 1, 8\] .* got Float"):
        _C._quantized_attention(q, q, q, torch.ones(2, 1, 1, 8), 0.5)
    with pytest.raises(ValueError, match=r"expected key_mask bool \[2, 1, 1, 8\] .* got Bool \[1, 1, 1, 8\]"):
        _C._quantized_attention(q, q, q, torch.ones(1, 1, 1, 8, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match=r"expected fp32 q, k, v on the CPU, got Double, Float, Float"):
        _C._quantized_attention(q.double(), q, q, None, 0.5)
    with pytest.raises(ValueError, match=r"expected scale > 0, got -0.5"):
        _C._quantized_attention(q, q, q, None, -0.5)


def test_quantized_attention_and_int8_tower_under_inference_mode(int8_pair):
    """Under torch.inference_mode() (whose thread-local state aten_for hands to ATen's workers) the
    quantized attention and the int8 tower give what they give under no_grad."""
    q, k, v = (torch.randn(1, 3, 600, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    want = _C._quantized_attention(q, k, v, None, 0.25)
    dense, quantized = int8_pair
    size = dense.config["vision_config"]["image_size"]
    pv = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = quantized.image_features(pv)
    with torch.inference_mode():
        assert torch.equal(_C._quantized_attention(q, k, v, None, 0.25), want)
        assert torch.equal(quantized.image_features(pv), features)


@torch.no_grad()
def test_int8_vision_tower_near_fp32(int8_pair):
    """weights="int8" runs the vision tower's products in int8: features close to fp32's, for one image
    and for a batch whose second image is padded (rows the packing did not plan for)."""
    dense, q = int8_pair
    v = dense.config["vision_config"]
    size = v["image_size"]
    pv = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(5)) * 2 - 1
    mask = torch.ones(2, size, size, dtype=torch.bool)
    mask[1, :, size // 2 :] = False
    for args in ((pv[:1],), (pv, mask)):
        fd, fq = dense.image_features(*args), q.image_features(*args)
        assert fq.shape == fd.shape
        err = ((fq - fd).norm() / fd.norm()).item()
        assert 0 < err < 0.05, err  # int8, and close
        cos = torch.nn.functional.cosine_similarity(fq.flatten(1), fd.flatten(1), dim=1)
        assert cos.min().item() > 0.998


def test_weights_argument_is_checked(tiny_model):
    with pytest.raises(ValueError, match="weights expected 'dense', 'bf16', 'int8' or 'gguf', got 'int4'"):
        prospect_core.load_model(tiny_model, weights="int4")
    with pytest.raises(TypeError, match="weights expected"):
        _C.SmolVLM(str(tiny_model), "float32", "cpu", 8)
    with pytest.raises(ValueError, match="weights='int8' expected dtype float32 on cpu"):
        prospect_core.load_model(tiny_model, dtype="bfloat16", weights="int8")
    with pytest.raises(FileNotFoundError, match="model.gguf"):
        prospect_core.load_model(tiny_model, weights="gguf")
    with pytest.raises(ValueError, match="weights expected one of dense, bf16, int8, gguf"):
        RunnerConfig(weights="q4")
    from prospect_core.backends import make_backend

    with pytest.raises(ValueError, match="expected backend 'native'"):
        make_backend("hf", tiny_model, weights="int8")


@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_runner_streams_on_stored_formats(tiny_model, weights):
    runner = small_runner(tiny_model, weights=weights, talk_policy="every_frame")
    assert runner.engine.backend.model.weights == weights
    out = runner.run_inference_on_video(video(6))
    assert len(out["predictions"]) > 0


@pytest.mark.parametrize("order", ["sequential", "interleaved"])
@pytest.mark.parametrize("rows,n", [(7, 40), (130, 17), (64, 576), (5, 3), (9, 100), (3, 1536)])
def test_bf16_rows_give_their_fp32_values_products(rows, n, order):
    """The decode step's bf16 product widens each weight exactly: it equals the fp32 product of the same
    values to float rounding, for any width (the vector bodies and the tail), row count and row order."""
    g = torch.Generator().manual_seed(rows * n)
    w = torch.randn(rows, n, generator=g).bfloat16()
    x = torch.randn(n, generator=g)
    got = _C._matvec(w, x, order=order)
    torch.testing.assert_close(got, (w.double() @ x.double()).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, _C._matvec(w.float(), x, order=order), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows,n", [(7, 40), (130, 17), (64, 576), (5, 3), (9, 100), (3, 1536)])
def test_fp32_rows_in_either_order_give_the_product(rows, n):
    """Both orders of reading the rows (the one this CPU uses and the other kind's) give the fp32 product."""
    g = torch.Generator().manual_seed(rows + n)
    w, x = torch.randn(rows, n, generator=g), torch.randn(n, generator=g)
    want = (w.double() @ x.double()).float()
    for order in ("sequential", "interleaved", ""):
        torch.testing.assert_close(_C._matvec(w, x, order=order), want, rtol=1e-5, atol=1e-5)
    assert _C.dense_row_order() in ("sequential", "interleaved")
    with pytest.raises(ValueError, match="order expected 'sequential', 'interleaved' or '', got 'diagonal'"):
        _C._matvec(w, x, order="diagonal")


@pytest.fixture(scope="module")
def bf16_checkpoint(tiny_model, tmp_path_factory):
    """The tiny checkpoint saved in bf16, as SmolVLM2's weights are released."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("tiny_bf16")
    for f in tiny_model.iterdir():
        if f.suffix == ".safetensors":
            save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in load_file(f).items()}, out / f.name)
        elif f.is_file():
            shutil.copy(f, out / f.name)
    return out


@torch.no_grad()
def test_bf16_weights_give_fp32s_results_on_a_bf16_checkpoint(bf16_checkpoint):
    """weights="bf16" keeps the decoder in bf16 and widens it as it reads: on a bf16 checkpoint the values
    are the ones fp32 holds, so logits after a prefill and after each decode step are fp32's to float
    rounding (the products sum in another order), and greedy decoding gives fp32's tokens, from half the
    decoder bytes."""
    dense = prospect_core.load_model(bf16_checkpoint)
    half = prospect_core.load_model(bf16_checkpoint, weights="bf16")
    assert half.weights == "bf16"
    t = dense.config["text_config"]
    matrices = t["num_hidden_layers"] * (
        t["hidden_size"] * t["head_dim"] * (2 * t["num_attention_heads"] + 2 * t["num_key_value_heads"])
        + 3 * t["hidden_size"] * t["intermediate_size"]
    )
    head = t["vocab_size"] * t["hidden_size"]
    tied = bool(dense.config.get("tie_word_embeddings"))
    # Layers at 2 bytes a weight; lm_head too, as a copy of the embeddings when they are tied.
    assert dense.weight_bytes - half.weight_bytes == matrices * 2 + (-head * 2 if tied else head * 2)
    text = torch.randint(40, 200, (1, 9), generator=torch.Generator().manual_seed(3))
    caches = {m: m.make_cache(64) for m in (dense, half)}
    for ids in (text, *(torch.tensor([[t]]) for t in (50, 51, 52))):  # a prefill, then one token at a time
        got, want = (m.prefill(m.embed_tokens(ids), caches[m], "user") for m in (half, dense))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    a = dense.greedy_generate(dense.embed_tokens(text), dense.make_cache(64), 24, []).tokens
    assert half.greedy_generate(half.embed_tokens(text), half.make_cache(64), 24, []).tokens == a


@torch.no_grad()
def test_bf16_weights_round_an_fp32_checkpoint(int8_pair, tiny_model):
    """On an fp32 checkpoint, weights="bf16" rounds the decoder's weights: near fp32, not equal to it."""
    dense, _ = int8_pair
    half = prospect_core.load_model(tiny_model, weights="bf16")
    text = torch.randint(40, 200, (1, 12), generator=torch.Generator().manual_seed(4))
    ld = dense.prefill(dense.embed_tokens(text), dense.make_cache(64), "user")
    lh = half.prefill(half.embed_tokens(text), half.make_cache(64), "user")
    assert 0 < ((lh - ld).norm() / ld.norm()).item() < 0.01
    with pytest.raises(ValueError, match="weights='bf16' expected dtype float32 on cpu"):
        prospect_core.load_model(tiny_model, dtype="bfloat16", weights="bf16")
