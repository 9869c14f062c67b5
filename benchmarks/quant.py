"""Issue 18's CPU figures: quantized decoder weights against fp32 and llama.cpp, the products alone against
the bandwidth probe, the streaming step against transformers, fairness under a competing process, and
frame skipping on vtest.avi. Every comparison runs in rounds, its sides in turn, so the machine's drift
falls on all of them; each figure is given as [min, median, max] over the rounds."""

import functools
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from common import best_seconds, common_prefix, matmul_gflops, memory_bandwidth_gbs

FORMATS = ("dense", "bf16", "int8", "gguf")
QUESTION = "<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n"
VIDEO = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def spread(values):
    """[min, median, max] of the rounds' figures."""
    return [min(values), statistics.median(values), max(values)]


def decoder_bytes(cfg, fmt):
    """Bytes one decode step reads: every decoder matrix and lm_head in the format's bytes per weight
    (Q4_1 20 / 32, Q8_0 34 / 32, bf16 2, fp32 4); lm_head is Q8_0 in both quantized formats."""
    t = cfg["text_config"]
    H, I, D = t["hidden_size"], t["intermediate_size"], t["head_dim"]
    layers = t["num_hidden_layers"] * (
        H * D * (2 * t["num_attention_heads"] + 2 * t["num_key_value_heads"]) + 3 * H * I
    )
    head = t["vocab_size"] * H
    per = {"dense": (4, 4), "bf16": (2, 2), "int8": (34 / 32, 34 / 32), "gguf": (20 / 32, 34 / 32)}[fmt]
    return layers * per[0] + head * per[1]


# ---- the products alone -------------------------------------------------------------------------------
PRODUCT_FORMATS = {"f32": 4.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_1": 20 / 32}  # bytes per weight


def product_data(w, kind):
    """fp32 rows w in a product format, as _C._time_matvec takes them: dense (f32, bf16) or ggml blocks."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if kind in ("f32", "bf16"):
        data = torch.from_numpy(w)
        return data.bfloat16() if kind == "bf16" else data
    qtype = {"q8_0": GGMLQuantizationType.Q8_0, "q4_1": GGMLQuantizationType.Q4_1}[kind]
    return torch.from_numpy(quantize(w, qtype))


def bench_matvec(cfg, iters):
    """Each format's product over all the decoder's rows at once (the rows of 576 columns are larger than an
    L3 cache in every format, as a decode step reads them) and over lm_head: GB/s (the fastest of `iters`)
    and the fraction of the probe's bandwidth, the probe (best of 3) taken just before each product, as
    this machine's bandwidth drifts by half between minutes."""
    from prospect_core import _C

    t = cfg["text_config"]
    H, I, L = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    shapes = {
        "decoder rows x 576 (q|k|v, o, gate|up)": (
            L * (t["head_dim"] * (t["num_attention_heads"] + 2 * t["num_key_value_heads"]) + H + 2 * I),
            H,
        ),
        "decoder rows x 1536 (down)": (L * H, I),
        "lm_head": (t["vocab_size"], H),
    }
    rng = np.random.default_rng(0)
    rows_out = []
    mine = _C.dense_row_order()
    other = {"sequential": "interleaved", "interleaved": "sequential"}[mine]
    for name, (rows, cols) in shapes.items():
        w = rng.standard_normal((rows, cols), dtype=np.float32)
        for kind, per_weight in PRODUCT_FORMATS.items():
            data = product_data(w, kind)
            # Dense rows also in the other CPU kind's order, as a baseline for this one's.
            for order in (mine, other) if kind in ("f32", "bf16") else ("",):
                bw = memory_bandwidth_gbs(512, 3)
                s = _C._time_matvec(data, kind, cols, iters, order=order)
                gbs = rows * cols * per_weight / s / 1e9
                rows_out.append(
                    {
                        "matrix": name,
                        "rows": rows,
                        "cols": cols,
                        "format": kind,
                        "row_order": order,  # dense only: this CPU's first, then the other's
                        "us": s * 1e6,
                        "gb_per_s": gbs,
                        "probe_gb_per_s": bw,
                        "fraction_of_probe": gbs / bw,
                    }
                )
            del data
    return rows_out


def bench_prefill_products(cfg, roof, iters, tokens=84):
    """A prefill's products (a frame's 84 tokens) on one layer's largest matrices, in each format: GOP/s
    (the fastest of `iters`) and the fraction of the run's fp32 matmul roof (the best of 5)."""
    from prospect_core import _C

    t = cfg["text_config"]
    H, I = t["hidden_size"], t["intermediate_size"]
    rng = np.random.default_rng(1)
    out = []
    for name, (rows, cols) in {"gate|up": (2 * I, H), "down": (H, I)}.items():
        w = rng.standard_normal((rows, cols), dtype=np.float32)
        for kind in PRODUCT_FORMATS:
            s = _C._time_matvec(product_data(w, kind), kind, cols, iters, tokens)
            gops = 2 * rows * cols * tokens / s / 1e9
            out.append(
                {
                    "matrix": name,
                    "rows": rows,
                    "cols": cols,
                    "tokens": tokens,
                    "format": kind,
                    "us": s * 1e6,
                    "gop_per_s": gops,
                    "fraction_of_fp32_roof": gops / roof,
                }
            )
    return out


# ---- decode -------------------------------------------------------------------------------------------
def bench_decode(path, gguf_file, rounds, repeats, new_tokens, threads):
    """ms per decoded token for each weight format and llama.cpp on the same GGUF, in rounds."""
    import prospect_core
    from llama_cpp_ref import bench_llama_cpp

    ids = torch.arange(60, 76).unsqueeze(0)
    models = {f: prospect_core.load_model(path, weights=f) for f in FORMATS}

    def ours(m):
        run = lambda: m.greedy_generate(m.embed_tokens(ids), m.make_cache(64), new_tokens, [])  # noqa: E731
        run()
        return statistics.median(run().decode_ms / new_tokens for _ in range(repeats))

    per = {f: [] for f in FORMATS + ("llama_cpp",)}
    ref = None
    for r in range(rounds):
        order = list(FORMATS) + ["llama_cpp"]
        for f in order if r % 2 == 0 else order[::-1]:
            if f == "llama_cpp":
                ref = bench_llama_cpp(gguf_file, threads, repeats, new_tokens=new_tokens)
                if "skipped" in ref:
                    continue
                per[f].append(ref["llama_cpp_ms_per_token"])
            else:
                per[f].append(ours(models[f]))
    out = {f: spread(v) for f, v in per.items() if v}
    out["llama_cpp_info"] = {k: v for k, v in (ref or {}).items() if k != "llama_cpp_ms_per_token"}
    return out


def llama_greedy(gguf_file, ids, new_tokens, threads):
    """llama.cpp's greedy tokens and last-prompt-position logits on the same prompt ids."""
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError:
        return None, None
    llm = Llama(
        model_path=str(gguf_file),
        n_ctx=len(ids) + new_tokens + 8,
        n_threads=threads,
        n_batch=len(ids),
        verbose=False,
        logits_all=False,
    )
    llm.eval(ids)
    vocab = llm.n_vocab()
    logits = lambda: np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,)).copy()  # noqa: E731
    first, out = logits(), []
    for _ in range(new_tokens):
        tok = int(np.argmax(logits()))
        out.append(tok)
        if tok == 2:  # <|im_end|>, SmolLM2's end of turn
            break
        llm.eval([tok])
    return out, first


@torch.no_grad()
def bench_parity(path, gguf_file, threads, new_tokens=32):
    """Logit error and greedy agreement of each format against fp32, and of each against llama.cpp on the
    same file. Ours end a reply with <end_of_utterance>, llama.cpp with <|im_end|> (the preset gave
    <|im_end|>'s row to <end_of_utterance>): both end tokens count as the same, and <|im_end|>'s logit is
    left out of the comparison with llama.cpp."""
    from transformers import AutoTokenizer

    import prospect_core

    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(QUESTION, add_special_tokens=False, return_tensors="pt").input_ids
    eou = tok.convert_tokens_to_ids("<end_of_utterance>")
    ref_tokens, ref_logits = llama_greedy(gguf_file, ids[0].tolist(), new_tokens, threads)
    out, dense_logits, dense_tokens = {}, None, None
    for f in FORMATS:
        m = prospect_core.load_model(path, weights=f)
        logits = m.prefill(m.embed_tokens(ids), m.make_cache(128), "user")[0]
        tokens = [
            2 if t == eou else t
            for t in m.greedy_generate(m.embed_tokens(ids), m.make_cache(128), new_tokens, [eou]).tokens
        ] + [2]
        if f == "dense":
            dense_logits, dense_tokens = logits, tokens
        row = {"reply": tok.decode([t for t in tokens if t != 2]), "tokens": len(tokens) - 1}
        if f != "dense":
            row["logit_rel_err_vs_fp32"] = float((logits - dense_logits).norm() / dense_logits.norm())
            row["greedy_agree_vs_fp32"] = common_prefix(tokens, dense_tokens)
        if ref_tokens is not None:
            v = ref_logits.shape[0]
            keep = torch.ones(v, dtype=torch.bool)
            keep[2] = False
            a, b = logits[:v][keep], torch.from_numpy(ref_logits)[keep]
            row["logit_rel_err_vs_llama_cpp"] = float((a - b).norm() / b.norm())
            row["greedy_agree_vs_llama_cpp"] = common_prefix(tokens, ref_tokens)
        out[f] = row
    if ref_tokens is not None:
        out["llama_cpp"] = {"reply": tok.decode([t for t in ref_tokens if t != 2]), "tokens": len(ref_tokens)}
    return out


def decode_ms_per_token(model, new_tokens):
    """One greedy decode of new_tokens after a 16-token prompt: ms per decoded token."""
    text = torch.arange(60, 76).unsqueeze(0)
    r = model.greedy_generate(model.embed_tokens(text), model.make_cache(64), new_tokens, [])
    return r.decode_ms / new_tokens


# ---- contention ---------------------------------------------------------------------------------------
class Competitor:
    """One CPU-bound process (a Python busy loop) for as long as the with-block lasts."""

    def __enter__(self):
        self.p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.p.kill()
        self.p.wait()


def stream_step_ms(model, pre, clips, ids, eou):
    """Median ms per streaming step (preprocess, vision, prefill, talk decision) over the clips, the first
    frame of each pass left out (it warms up)."""
    cache = model.make_cache(4096)
    ms = []
    for f, i in zip(clips, ids):
        t0 = time.perf_counter()
        pv = pre(f)[0]
        model.greedy_generate(model.joint_embed(i, pv), cache, 0, [], silence=(eou, 1.0), span_kind="frame")
        ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms[1:])


def frames_and_ids(path, n):
    from transformers import AutoProcessor

    import prospect_core as core
    from prospect_core import prompt
    from prospect_core.frames import FramePreprocessor

    proc = AutoProcessor.from_pretrained(path)
    cfg = prospect_core_config(path)
    v = cfg["vision_config"]
    seq = (v["image_size"] // v["patch_size"]) ** 2 // cfg["scale_factor"] ** 2  # tokens per image
    clips = [f for _, f in zip(range(n), (f for _, f in core.VideoReader(VIDEO, 2.0)))]
    tok = proc.tokenizer
    ids = [
        tok(
            prompt.frame_turn((i + 1) / 2.0, seq) + prompt.ASSISTANT_PROMPT,
            add_special_tokens=False,
            return_tensors="pt",
        ).input_ids
        for i in range(n)
    ]
    return FramePreprocessor(proc), clips, ids, tok.convert_tokens_to_ids(prompt.EOU)


def prospect_core_config(path):
    import json

    return json.loads((path / "config.json").read_text())


@torch.no_grad()
def bench_contention(path, rounds, frames, new_tokens):
    """The streaming step (int8 weights) and decode (dense and gguf) alone and beside one busy process,
    in rounds; the ratio contended / quiet of each round's pair."""
    import prospect_core

    pre, clips, ids, eou = frames_and_ids(path, frames)
    m8 = prospect_core.load_model(path, weights="int8")
    decoders = {f: prospect_core.load_model(path, weights=f) for f in ("dense", "gguf")}
    res = {"stream_int8": {"quiet": [], "busy": []}, **{f"decode_{f}": {"quiet": [], "busy": []} for f in decoders}}
    for _ in range(rounds):
        for busy in (False, True):
            with Competitor() if busy else _Nothing():
                key = "busy" if busy else "quiet"
                res["stream_int8"][key].append(stream_step_ms(m8, pre, clips, ids, eou))
                for f, m in decoders.items():
                    decode_ms_per_token(m, new_tokens)
                    res[f"decode_{f}"][key].append(
                        statistics.median(decode_ms_per_token(m, new_tokens) for _ in range(3))
                    )
    return {
        k: {
            "quiet_ms": spread(v["quiet"]),
            "busy_ms": spread(v["busy"]),
            "busy_over_quiet": spread([b / q for b, q in zip(v["busy"], v["quiet"])]),
        }
        for k, v in res.items()
    }


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---- streaming against transformers, and frame skipping -----------------------------------------------
def bench_stream_vs_transformers(path, rounds, frames):
    """Our streaming step (int8 weights) against transformers fp32 (its CPU default), in rounds."""
    from streaming import bench_streaming

    rows = [bench_streaming(path, VIDEO, frames=frames, repeats=1, weights="int8") for _ in range(rounds)]
    return {
        "prospect_int8_ms_per_frame": spread([r["prospect_ms_per_frame"] for r in rows]),
        "transformers_fp32_ms_per_frame": spread([r["transformers_ms_per_frame"] for r in rows]),
        "speedup": spread([r["transformers_ms_per_frame"] / r["prospect_ms_per_frame"] for r in rows]),
        "prospect_vision_ms": spread([r["prospect_vision_ms"] for r in rows]),
        "vision_gflop_per_frame": rows[0]["vision_gflop_per_frame"],
    }


@torch.no_grad()
def bench_steps(path, rounds, frames):
    """The streaming step (preprocess, vision, prefill, talk decision; median over the frames after the
    first) in the three ways to run it: fp32, weights="int8", and dtype="bfloat16" (the engine in bf16: a
    frame through ATen's oneDNN products, a decode step in prospect's loops), in rounds; and decode."""
    import prospect_core

    pre, clips, ids, eou = frames_and_ids(path, frames)
    models = {
        "fp32": prospect_core.load_model(path),
        "int8": prospect_core.load_model(path, weights="int8"),
        "bf16_dtype": prospect_core.load_model(path, dtype="bfloat16"),
    }
    ms = {k: [] for k in models}
    decode = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            ms[k].append(stream_step_ms(m, pre, clips, ids, eou))
            decode[k].append(decode_ms_per_token(m, 32))
    return {
        "ms_per_step": {k: spread(v) for k, v in ms.items()},
        "speedup_vs_fp32": {k: spread([f / x for f, x in zip(ms["fp32"], v)]) for k, v in ms.items() if k != "fp32"},
        "decode_ms_per_token": {k: spread(v) for k, v in decode.items()},
    }


@torch.no_grad()
def bench_prefill_over_cache(path, rounds, fills=(0, 2000, 4000), tokens=84):
    """A frame's prefill and talk decision (84 tokens, weights="int8") over a cache already holding `fills`
    tokens, as a long stream's cache does before its strategy shrinks it: ms, the fastest of 5 in each of
    `rounds` rounds; and the prefill's attention alone (_C._causal_attention, 9 heads over 3 KV heads, one
    layer) over the same cached tokens, in fp32 and with the int8 model's bf16 products (fp32 again on a
    CPU without AVX512_BF16)."""
    import prospect_core
    from prospect_core import _C

    m = prospect_core.load_model(path, weights="int8")
    t = m.config["text_config"]
    H, D = t["hidden_size"], t["head_dim"]
    heads, kv_heads = t["num_attention_heads"], t["num_key_value_heads"]
    g = torch.Generator().manual_seed(0)
    step, layer, layer_bf16 = ({f: [] for f in fills} for _ in range(3))
    for _ in range(rounds):
        for fill in fills:
            cache = m.make_cache(max(fills) + tokens)
            for start in range(0, fill, 500):
                m.greedy_generate(torch.randn(1, min(500, fill - start), H, generator=g) * 0.02, cache, 0, [])
            frame = torch.randn(1, tokens, H, generator=g) * 0.02

            def prefill(frame=frame, cache=cache, fill=fill):
                m.greedy_generate(frame, cache, 0, [], silence=(0, 1.0), span_kind="frame")
                cache.truncate(fill)  # back to `fill` for the next try

            step[fill].append(1e3 * best_seconds(prefill, 5))
            q = torch.randn(tokens, heads, D, generator=g)
            k, v = (torch.randn(kv_heads, fill + tokens, D, generator=g) for _ in range(2))
            for times, bf16 in ((layer, False), (layer_bf16, True)):
                attend = functools.partial(_C._causal_attention, q, k, v, fill, D**-0.5, bf16)
                times[fill].append(1e3 * best_seconds(attend, 10))
    return {
        "tokens": tokens,
        "prefill_ms": {str(f): spread(v) for f, v in step.items()},
        "attention_ms_per_layer": {str(f): spread(v) for f, v in layer.items()},
        "attention_bf16_ms_per_layer": {str(f): spread(v) for f, v in layer_bf16.items()},
        "bf16_attention": _C._cpu_has_bf16_dot(),
    }


@torch.no_grad()
def bench_vision(path, rounds, frames, fp32_roof):
    """The vision tower alone on vtest.avi frames, in rounds: fp32, int8 products (weights="int8") and the
    bf16 model (dtype="bfloat16"): ms per frame, GOP/s against the run's fp32 roof and a bf16 matmul roof
    measured here, and how far int8's and bf16's features are from fp32's."""
    import prospect_core
    from prospect_core import _C
    from streaming import vision_flops

    pre, clips, _, _ = frames_and_ids(path, frames)
    pvs = [pre(f)[0] for f in clips]
    models = {f: prospect_core.load_model(path, weights=f) for f in ("dense", "int8")}
    models["bf16"] = prospect_core.load_model(path, dtype="bfloat16")
    inputs = {f: [pv.to(m.dtype) for pv in pvs] for f, m in models.items()}
    ms = {f: [] for f in models}
    for _ in range(rounds):
        for f, m in models.items():
            m.image_features(inputs[f][0])
            t0 = time.perf_counter()
            for pv in inputs[f]:
                m.image_features(pv)
            ms[f].append((time.perf_counter() - t0) * 1e3 / len(pvs))
    errs, cos, errs_bf16 = [], [], []
    for i, pv in enumerate(pvs):
        a, b = models["dense"].image_features(pv), models["int8"].image_features(pv)
        errs.append(((b - a).norm() / a.norm()).item())
        cos.append(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0).item())
        c = models["bf16"].image_features(inputs["bf16"][i]).float()
        errs_bf16.append(((c - a).norm() / a.norm()).item())
    gflop = vision_flops(models["dense"].config) / 1e9
    return {
        "ms": {f: spread(v) for f, v in ms.items()},
        "speedup": spread([d / q for d, q in zip(ms["dense"], ms["int8"])]),
        "bf16_speedup": spread([d / q for d, q in zip(ms["dense"], ms["bf16"])]),
        "gop_per_s": {f: gflop / (v[1] / 1e3) for f, v in ((f, spread(v)) for f, v in ms.items())},
        "fp32_roof_gflop_per_s": fp32_roof,
        "bf16_roof_gflop_per_s": matmul_gflops(3072 if frames > 2 else 512, dtype=torch.bfloat16),
        "gflop_per_frame": gflop,
        "int8_weight_max": _C._int8_gemm_weight_max(),
        "feature_rel_err": spread(errs),
        "feature_cosine_min": min(cos),
        "bf16_feature_rel_err": spread(errs_bf16),
        "bf16_tower_attention": "prospect" if _C._cpu_has_bf16_dot() else "ATen",
        **(
            {"attention_layer_ms": attention_layer_ms(models["dense"].config, rounds)}
            if _C._quantized_attention_fused()
            else {}
        ),
    }


def attention_layer_ms(cfg, rounds, repeats=10):
    """One tower layer's attention alone (one image's patches, the config's heads), as the int8 tower runs it:
    prospect's fused products and ATen's, in turns, in rounds; ms per layer (the mean over `repeats` calls),
    and the ATen / fused ratio of each round."""
    from prospect_core import _C

    v = cfg["vision_config"]
    heads = v["num_attention_heads"]
    hd, patches = v["hidden_size"] // heads, (v["image_size"] // v["patch_size"]) ** 2
    q, k, val = torch.randn(3, 1, heads, patches, hd).unbind(0)
    ms = {"aten": [], "fused": []}
    for _ in range(rounds):
        for name in ms:
            run = functools.partial(_C._quantized_attention, q, k, val, None, hd**-0.5, fused=name == "fused")
            run()
            t0 = time.perf_counter()
            for _ in range(repeats):
                run()
            ms[name].append((time.perf_counter() - t0) * 1e3 / repeats)
    return {
        "shape": [heads, patches, hd],
        "ms": {n: spread(x) for n, x in ms.items()},
        "aten_over_fused": spread([a / f for a, f in zip(ms["aten"], ms["fused"])]),
    }


def bench_frame_skip(path, frames, thresholds):
    """vtest.avi (a fixed camera) through the runner without skipping, then at each threshold: frames skipped,
    time, and how the model's own decisions and replies differ on the frames both processed."""
    from prospect_core.runners import StreamRunner

    video = {"video_id": "vtest", "video_path": VIDEO, "fps": 2.0, "conversation": [], "max_frames": frames}

    def run(skip):
        runner = StreamRunner(path, weights="int8", max_new_tokens=16, skip_threshold=skip)
        t0 = time.perf_counter()
        out = runner.run_inference_on_video(video)
        out["seconds"] = time.perf_counter() - t0
        return out

    off = run(None)
    return [_skip_row(off, run(t), frames, t) for t in thresholds]


def _skip_row(off, on, frames, threshold):
    """One threshold's run against the run without skipping."""
    kept = [i for i, f in enumerate(on["frames"]) if not f.get("skipped")]
    same_talk = sum(off["frames"][i]["talked"] == on["frames"][i]["talked"] for i in kept)
    same_text = sum(off["frames"][i]["text"] == on["frames"][i]["text"] for i in kept)
    probs = [(off["frames"][i]["silence_prob"], on["frames"][i]["silence_prob"]) for i in kept]
    return {
        "frames": frames,
        "threshold": threshold,
        "frames_skipped": on["totals"]["frames_skipped"],
        "seconds_off": off["seconds"],
        "seconds_on": on["seconds"],
        "replies_off": off["totals"]["dialogues_generated"],
        "replies_on": on["totals"]["dialogues_generated"],
        "kept_frames_same_talk_decision": f"{same_talk}/{len(kept)}",
        "kept_frames_same_text": f"{same_text}/{len(kept)}",
        "kept_frames_max_silence_prob_diff": max(
            (abs(a - b) for a, b in probs if a is not None and b is not None), default=0.0
        ),
        "replies_on_skipped_frames_off": sum(off["frames"][i]["talked"] for i in range(frames) if i not in kept),
    }


def bench(path, gguf_file, bw, roof, quick=False, rounds=3):
    threads = torch.get_num_threads()
    cfg = prospect_core_config(path)
    res = {"threads": threads, "rounds": rounds}
    from prospect_core import _C

    res["quant_kernel"] = _C.quant_kernel()
    res["dense_row_order"] = _C.dense_row_order()
    t0 = time.perf_counter()
    res["cpu_has_bf16_dot"] = _C._cpu_has_bf16_dot()
    res["matvec"] = bench_matvec(cfg, 3 if quick else 20)
    res["prefill_products"] = bench_prefill_products(cfg, roof, 3 if quick else 30)
    res["decode"] = bench_decode(path, gguf_file, rounds, 1 if quick else 5, 8 if quick else 32, threads)
    res["decode_bytes_per_token"] = {f: decoder_bytes(cfg, f) for f in FORMATS}
    res["decode_fraction_of_probe"] = {
        f: decoder_bytes(cfg, f) / (res["decode"][f][1] / 1e3) / (bw * 1e9) for f in FORMATS
    }
    res["parity"] = bench_parity(path, gguf_file, threads, new_tokens=8 if quick else 32)
    res["contention"] = bench_contention(path, rounds, 3 if quick else 5, 8 if quick else 32)
    res["vision"] = bench_vision(path, rounds, 2 if quick else 4, roof)
    res["streaming"] = bench_stream_vs_transformers(path, rounds, 3 if quick else 6)
    res["steps"] = bench_steps(path, rounds, 3 if quick else 6)
    res["prefill_over_cache"] = bench_prefill_over_cache(path, rounds, (0, 500) if quick else (0, 2000, 4000))
    res["frame_skip"] = bench_frame_skip(path, 6 if quick else 30, (0.01, 0.02))
    res["seconds"] = time.perf_counter() - t0
    return res


def _r(x, fmt="{:.2f}"):
    return "–".join(fmt.format(v) for v in (x[0], x[2])) + f" (median {fmt.format(x[1])})"


def markdown(res):
    lines = [
        "",
        f"## Quantized decoder, contention, frame skipping ({res['threads']} threads, kernel {res['quant_kernel']}, "
        f"dense rows {res.get('dense_row_order', 'interleaved')}, "
        f"ranges over {res['rounds']} rounds)",
        "",
        "| decode, 256m-smollm2 | ms/token | MB/token | % of probe |",
        "|---|---|---|---|",
    ]
    d = res["decode"]
    for f in FORMATS:
        lines.append(
            f"| prospect {f} | {_r(d[f])} | {res['decode_bytes_per_token'][f] / 1e6:.0f} | "
            f"{100 * res['decode_fraction_of_probe'][f]:.0f}% |"
        )
    if "llama_cpp" in d:
        lines.append(
            f"| llama.cpp {d['llama_cpp_info'].get('llama_cpp_version', '')} Q4_1 | {_r(d['llama_cpp'])} | "
            f"{d['llama_cpp_info'].get('llama_cpp_bytes_per_token', 0) / 1e6:.0f} | |"
        )
    lines += [
        "",
        "Products alone: a matrix smaller than the L3 cache partly stays in it from one product to the next, "
        "so only matrices well over it (MB column) measure memory alone.",
        "",
        "| product alone | format | MB | µs (fastest) | GB/s | probe just before, GB/s | % of that probe |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["matvec"]:
        mb = r["gb_per_s"] * r["us"] / 1e3
        lines.append(
            f"| {r['matrix']} [{r['rows']} x {r['cols']}] | {r['format']} {r.get('row_order', '')} | {mb:.0f} | "
            f"{r['us']:.0f} | "
            f"{r['gb_per_s']:.1f} | {r['probe_gb_per_s']:.1f} | {100 * r['fraction_of_probe']:.0f}% |"
        )
    lines += [
        "",
        "A prefill's products alone (84 tokens, one layer's matrices):",
        "",
        "| prefill product | format | µs | GOP/s | % of fp32 roof |",
        "|---|---|---|---|---|",
    ]
    for r in res.get("prefill_products", []):
        lines.append(
            f"| {r['matrix']} [{r['rows']} x {r['cols']}] | {r['format']} | {r['us']:.0f} | {r['gop_per_s']:.0f} | "
            f"{100 * r['fraction_of_fp32_roof']:.0f}% |"
        )
    lines += [
        "",
        "| parity | logit rel. err vs fp32 | greedy agree vs fp32 | logit rel. err vs llama.cpp "
        "| greedy agree vs llama.cpp |",
        "|---|---|---|---|---|",
    ]
    for f in FORMATS:
        p = res["parity"][f]
        lines.append(
            f"| {f} | {p.get('logit_rel_err_vs_fp32', 0):.4f} | {p.get('greedy_agree_vs_fp32', '–')} | "
            f"{p.get('logit_rel_err_vs_llama_cpp', float('nan')):.4f} | {p.get('greedy_agree_vs_llama_cpp', '–')} |"
        )
    lines += ["", "| with one busy process | quiet ms | busy ms | busy / quiet |", "|---|---|---|---|"]
    for k, v in res["contention"].items():
        lines.append(
            f"| {k} | {_r(v['quiet_ms'], '{:.1f}')} | {_r(v['busy_ms'], '{:.1f}')} | {_r(v['busy_over_quiet'])} |"
        )
    v = res["vision"]
    lines += [
        "",
        f"Vision tower alone, 512 px ({v['gflop_per_frame']:.1f} GFLOP a frame): fp32 {_r(v['ms']['dense'], '{:.0f}')} "
        f"ms/frame, int8 products {_r(v['ms']['int8'], '{:.0f}')}, speedup {_r(v['speedup'])}x; at the medians "
        f"{v['gop_per_s']['dense']:.0f} and {v['gop_per_s']['int8']:.0f} GOP/s against the fp32 matmul roof of "
        f"{v['fp32_roof_gflop_per_s']:.0f}. int8 features against fp32: relative error "
        f"{_r(v['feature_rel_err'], '{:.4f}')}, cosine at least {v['feature_cosine_min']:.5f} "
        f"(weights to |q| <= {v['int8_weight_max']}; attention "
        f"{'scores in int8, weights in bf16' if res.get('cpu_has_bf16_dot') else 'in fp32'} on this CPU).",
    ]
    if "bf16" in v["ms"]:
        lines[-1] += (
            f" The bf16 model (dtype bfloat16; attention {v['bf16_tower_attention']}'s): "
            f"{_r(v['ms']['bf16'], '{:.0f}')} ms/frame, {_r(v['bf16_speedup'])}x fp32, "
            f"{v['gop_per_s']['bf16']:.0f} GFLOP/s at the median = "
            f"{100 * v['gop_per_s']['bf16'] / v['bf16_roof_gflop_per_s']:.0f}% of a bf16 matmul roof of "
            f"{v['bf16_roof_gflop_per_s']:.0f} (3072^2, this run); features against fp32: relative error "
            f"{_r(v['bf16_feature_rel_err'], '{:.4f}')}."
        )
    if "attention_layer_ms" in v:
        a = v["attention_layer_ms"]
        lines[-1] += (
            f" The int8 tower's attention alone, one layer ({a['shape'][0]} heads x {a['shape'][1]} patches x "
            f"{a['shape'][2]}): prospect's fused products {_r(a['ms']['fused'])} ms, ATen's {_r(a['ms']['aten'])} "
            f"ms, {_r(a['aten_over_fused'])}x."
        )
    s = res["streaming"]
    lines += [
        "",
        f"Streaming step, 256m 512 px: prospect int8 {_r(s['prospect_int8_ms_per_frame'], '{:.0f}')} ms/frame, "
        f"transformers fp32 {_r(s['transformers_fp32_ms_per_frame'], '{:.0f}')}, speedup {_r(s['speedup'])}x "
        "(each pass's frames in all, the first included, interleaved with transformers).",
        "",
    ]
    if "steps" in res:
        st = res["steps"]["ms_per_step"]
        sp = res["steps"]["speedup_vs_fp32"]
        lines += [
            f"Streaming step alone (median over a pass's frames after the first): fp32 {_r(st['fp32'], '{:.0f}')} ms, "
            f"int8 {_r(st['int8'], '{:.0f}')} ({_r(sp['int8'])}x), dtype bfloat16 {_r(st['bf16_dtype'], '{:.0f}')} "
            f"({_r(sp['bf16_dtype'])}x). Decode in the same rounds, ms/token: "
            + ", ".join(f"{k} {_r(v)}" for k, v in res["steps"]["decode_ms_per_token"].items())
            + ".",
            "",
        ]
    if "prefill_over_cache" in res:
        pc = res["prefill_over_cache"]
        lines += [
            f"A frame's prefill and talk decision ({pc['tokens']} tokens, int8) over a cache already holding "
            + ", ".join(f"{f} tokens {_r(v, '{:.0f}')}" for f, v in pc["prefill_ms"].items())
            + " ms; its attention alone, one layer, fp32: "
            + ", ".join(f"{f} {_r(v)}" for f, v in pc["attention_ms_per_layer"].items())
            + " ms; "
            + ("bf16 products (the int8 model's): " if pc.get("bf16_attention") else "bf16 asked, fp32 here: ")
            + ", ".join(f"{f} {_r(v)}" for f, v in pc.get("attention_bf16_ms_per_layer", {}).items())
            + " ms.",
            "",
        ]
    for fs in res["frame_skip"]:
        lines.append(
            f"Frame skipping on vtest.avi ({fs['frames']} frames, threshold {fs['threshold']}): "
            f"{fs['frames_skipped']} skipped; {fs['seconds_off']:.0f} s -> {fs['seconds_on']:.0f} s; replies "
            f"{fs['replies_off']} -> {fs['replies_on']}; on the kept frames the talk decision agreed on "
            f"{fs['kept_frames_same_talk_decision']}, the text on {fs['kept_frames_same_text']}."
        )
    return "\n".join(lines) + "\n"
