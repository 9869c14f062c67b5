"""The benchmark scripts run end to end on small shapes, so they cannot rot (no timing asserted)."""

import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prospect_core import _C

ROOT = Path(__file__).resolve().parent.parent


def run_quick(script, tmp_path, *extra, timeout):
    """benchmarks/<script> --quick, writing into tmp_path and making its models there."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *extra, "--out", str(tmp_path)]
    cmd += ["--models", str(tmp_path / "models")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_surgery_benchmark_smoke(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/surgery.py"),
            "--repeats",
            "1",
            "--layers",
            "2",
            "--kv-heads",
            "2",
            "--tokens",
            "1024",
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "| torch_cat |" in out
    result = json.loads(next(tmp_path.glob("surgery-*.json")).read_text())
    assert [r["variant"] for r in result["rows"]] == ["prospect_shift", "prospect_keep", "torch_cat"]
    assert all(r["median_ms"] > 0 and r["runs"][0]["cache_bytes"] == 2 * 2 * 2 * 1024 * 64 * 4 for r in result["rows"])


def test_harness_quick_smoke(tmp_path):
    """The whole harness on the tiny preset with one repetition."""
    r = run_quick("run.py", tmp_path, "--parts", "decode,streaming,surgery,long_stream", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (js,) = tmp_path.glob("*-quick-decode-streaming-surgery-long_stream.json")  # beside it: its surgery part
    res = json.loads(js.read_text())
    assert res["memory_bandwidth_gbs"] > 0 and res["matmul_gflops"] > 0
    (dec,) = res["decode"]
    assert dec["preset"] == "tiny" and dec["prospect_ms_per_token"] > 0 and dec["weight_bytes_per_token"] > 0
    assert {"transformers_generate_ms_per_token", "original_loop_ms_per_token"} <= set(dec)
    assert res["streaming"][0]["tokens_per_frame"] > 16
    assert set(res["long_stream"]) == {"none", "drop_all", "drop_middle", "summarize_and_drop", "unbounded"}
    assert (tmp_path / js.name.replace(".json", ".md")).read_text().startswith("# prospect benchmarks")
    assert list(tmp_path.glob("*-long-stream.png"))


def test_quant_harness_quick_smoke(tmp_path):
    """Issue 18's part on the 256m-smollm2 checkpoint, one round of everything at its smallest (llama.cpp
    only where llama-cpp-python is installed)."""
    r = run_quick("run.py", tmp_path, "--parts", "quant", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (js,) = tmp_path.glob("*-quick-quant.json")
    q = json.loads(js.read_text())["quant"]
    assert set(q["decode"]) >= {"dense", "bf16", "int8", "gguf"} and all(
        q["decode"][f][1] > 0 for f in ("dense", "bf16", "int8", "gguf")
    )
    assert (
        q["decode_bytes_per_token"]["gguf"] < q["decode_bytes_per_token"]["int8"] < q["decode_bytes_per_token"]["dense"]
    )
    assert {r["format"] for r in q["matvec"]} == {"f32", "bf16", "q8_0", "q4_1"} and all(
        r["gb_per_s"] > 0 for r in q["matvec"]
    )
    dense = [r for r in q["matvec"] if r["format"] in ("f32", "bf16")]
    assert {r["row_order"] for r in dense} == {"sequential", "interleaved"}
    assert dense[0]["row_order"] == q["dense_row_order"] == _C.dense_row_order()
    pre = q["prefill_products"]
    assert {r["format"] for r in pre} == {"f32", "bf16", "q8_0", "q4_1"} and all(r["gop_per_s"] > 0 for r in pre)
    assert isinstance(q["cpu_has_bf16_dot"], bool)
    assert all(q["steps"]["ms_per_step"][k][1] > 0 for k in ("fp32", "int8", "bf16_dtype"))
    assert q["parity"]["gguf"]["greedy_agree_vs_fp32"] >= 4 and "Paris" in q["parity"]["gguf"]["reply"]
    assert q["contention"]["decode_gguf"]["busy_ms"][1] > 0
    pc = q["prefill_over_cache"]
    assert set(pc["prefill_ms"]) == {"0", "500"} and all(v[1] > 0 for v in pc["attention_ms_per_layer"].values())
    assert set(pc["attention_bf16_ms_per_layer"]) == {"0", "500"} and isinstance(pc["bf16_attention"], bool)
    v = q["vision"]
    assert v["ms"]["int8"][1] > 0 and 0 < v["feature_rel_err"][2] < 0.2 and v["feature_cosine_min"] > 0.98
    assert v["ms"]["bf16"][1] > 0 and 0 < v["bf16_feature_rel_err"][2] < 0.05 and v["bf16_roof_gflop_per_s"] > 0
    low, high = q["frame_skip"]  # thresholds 0.01 and 0.02
    assert 0 < high["frames_skipped"] < high["frames"]  # vtest.avi's fixed camera: most frames change little
    assert low["frames_skipped"] <= high["frames_skipped"]
    md = js.with_suffix(".md").read_text()
    assert "## Quantized decoder" in md and "over a cache already holding 0 tokens" in md
    assert "The bf16 model (dtype bfloat16; attention" in md


def test_profile_vision_smoke(tiny_model):
    """The vision profile prints a table of ATen ops for both encoders, and for ours with int8 products."""
    for extra in ([], ["--transformers"], ["--weights", "int8"]):
        r = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks/profile_vision.py"), "--model", str(tiny_model), "--rows", "5"]
            + extra,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert "Self CPU time total" in r.stdout and "aten::" in r.stdout


# --- benchmarks/gpu.py: the helpers that need no GPU, the no-GPU exit, and the whole run on the CPU ---


def _gpu():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu

    return gpu


def test_gpu_decode_floor_from_config():
    gpu = _gpu()
    from decode import text_weight_bytes
    from prospect_core.tools.make_model import PRESETS

    t = dict(PRESETS["2.2b"]["text_config"])
    # 2.2b by hand: per layer q 2048x2048, k 2048x2048, v 2048x2048, o 2048x2048 (32 heads and 32 kv heads
    # of 64), gate/up/down 2048x8192 each, two norms of 2048; 24 layers; final norm; lm_head 49280x2048;
    # one embedding row of 2048. bf16: 2 bytes each.
    layer = 4 * 2048 * 2048 + 3 * 2048 * 8192 + 2 * 2048
    assert gpu.decode_weight_bytes(t, 2) == (24 * layer + 2048 + 49280 * 2048 + 2048) * 2 == 3_423_281_152
    # The CPU harness's count (decode.text_weight_bytes) leaves out the embedding row; otherwise the same.
    fake = type("M", (), {"config": {"text_config": t}, "dtype": torch.bfloat16})()
    assert gpu.decode_weight_bytes(t, 2) == text_weight_bytes(fake) + 2048 * 2
    # Grouped-query attention (256m: 9 heads, 3 kv heads) counts k and v at the kv width; head_dim may be absent.
    s = dict(PRESETS["256m"]["text_config"])
    del s["head_dim"]
    per = 576 * 64 * (2 * 9 + 2 * 3) + 3 * 576 * 1536 + 2 * 576
    assert gpu.decode_weight_bytes(s, 4) == (30 * per + 576 + 49280 * 576 + 576) * 4
    # 3.42 GB at 4,000 GB/s: 0.856 ms a token; 1.2 ms measured is 71% of that floor.
    assert gpu.floor_ms(3_423_281_152, 4000) == pytest.approx(0.85582, rel=1e-4)
    assert gpu.per_token_ms(200.0, 10.0, 128) == pytest.approx(190 / 127)
    with pytest.raises(ValueError, match="n expected >= 2"):
        gpu.per_token_ms(1.0, 1.0, 1)
    assert gpu.common_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2 and gpu.common_prefix([], [1]) == 0


def _sample_result():
    decode = {
        "prompt_tokens": 16,
        "new_tokens": 128,
        "weight_bytes_per_token": 3_423_281_152,
        "bandwidth_gbs": 4000.0,
        "floor_ms_per_token": 0.9,
        "ours_graph": {"ms_per_token": 1.2, "engine_ms_per_token": 1.1, "graph_steps": 127},
        "ours_eager": {"ms_per_token": 6.0},
        "tokens": {"ours_graph": [5, 6, 7], "ours_eager": [5, 6, 8]},
    }
    return {
        "date": "2026-12-01",
        "command": "python benchmarks/run.py --device cuda",
        "preset": "2.2b",
        "dtype": "bfloat16",
        "repeats": 3,
        "elapsed_s": 120.0,
        "machine": {"gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "capability": "9.0", "torch": "2.11.0+cu130"},
        "ceilings": {"copy_bytes": 2 * 2**30, "copy_gbs": 4000.0, "matmul_n": 8192, "matmul_tflops": 700.0},
        "decode": decode,
        "streaming": {
            "frames": 40,
            "warmup_frames": 3,
            "tokens_per_frame": 93,
            "ms_per_frame": 22.0,
            "fps": 1000 / 22.0,
        },
        "surgery": {
            "shape": {"layers": 24, "heads": 32, "head_dim": 64, "tokens": 4096, "keep_first": 300, "keep_last": 512},
            "dtype": "bfloat16",
            "rows": [
                {
                    "variant": "prospect_shift",
                    "median_ms": 0.4,
                    "extra_peak_bytes": 2**20,
                    "extra_peak_pct": 0.12,
                    "same_storage": True,
                },
                {
                    "variant": "torch_cat",
                    "median_ms": 0.9,
                    "extra_peak_bytes": 160 * 2**20,
                    "extra_peak_pct": 19.8,
                    "same_storage": False,
                },
            ],
            "max_extra_peak_pct": 0.12,
        },
    }


def test_gpu_targets_and_markdown():
    gpu = _gpu()
    res = _sample_result()
    hf = {
        "transformers_eager": {"ms_per_token": 5.0, "tokens": [5, 6, 7]},
        "transformers_static_compile": {"error": "time cap of 80 s reached during: compiling"},
        "worker_s": 81.0,
    }
    d = gpu.add_transformers(res["decode"], hf)
    assert d["ours_graph"]["pct_of_floor"] == pytest.approx(75.0)
    assert d["ours_graph"]["engine_pct_of_floor"] == pytest.approx(100 * 0.9 / 1.1)
    assert d["speedup_graph_vs_transformers_eager"] == pytest.approx(5.0 / 1.2)
    assert d["speedup_graph_vs_eager"] == pytest.approx(5.0)
    assert d["speedup_graph_vs_transformers_compile"] is None  # the compile variant failed
    assert d["graph_eager_tokens_equal"] is False and d["ours_transformers_common_prefix"] == 2
    assert d["tokens"]["transformers_eager"] == [5, 6, 7] and "tokens" not in d["transformers_eager"]
    assert d["transformers_worker"] == {"worker_s": 81.0}

    targets = {t["key"]: t for t in gpu.evaluate_targets(res)}
    assert [t["pass"] for t in targets.values()] == [True, False, None, True, True]
    assert targets["streaming_fps"]["value"] == pytest.approx(45.45, abs=0.01)

    md = gpu.markdown(res)
    assert md.startswith("# prospect GPU benchmarks, 2026-12-01\n")
    assert "NVIDIA H200" in md and "torch 2.11.0+cu130" in md and "700 TFLOP/s" in md
    assert "| decode, ours with CUDA graphs: % of the HBM floor | 75.00 | >= 60 | PASS |" in md
    assert "| decode, ours with CUDA graphs vs transformers generate() | 4.17 | >= 5 | FAIL |" in md
    assert "static cache + torch.compile | n/a | >= 1 | n/a |" in md
    assert "| prospect, CUDA graphs | 1.200 | 833 | 75% | 1.00x | engine's decode_ms/N 1.100; graph_steps 127 |" in md
    assert "| transformers generate(), eager | 5.000 | 200 | 18% | 4.17x |" in md
    assert "error: time cap of 80 s reached during: compiling" in md
    assert "graph and eager tokens identical: NO" in md
    res["decode"]["graph_eager_divergence"] = {
        "index": 4,
        "tokens": [11, 12],
        "logits": [28.0, 27.875],
        "gap": 0.125,
        "bf16_step": 0.125,
    }
    assert (
        "graph and eager tokens identical: NO (first parted at token 4: a fresh prefill gives eager's token 28 and "
        "the graph's 27.88, a gap of 0.125 = 1.0 bf16 steps at that size)" in gpu.markdown(res)
    )
    del res["decode"]["graph_eager_divergence"]
    assert "| prospect_shift | 0.40 | n/a | 1.00 | 0.12% | yes |" in md
    assert "| torch_cat | 0.90 | n/a | 160.00 | 19.80% | no |" in md
    # A part that failed is named, the others still rendered.
    res["streaming"] = {"error": "RuntimeError: boom"}
    md = gpu.markdown(res)
    assert "RuntimeError: boom" in md and "| prospect_shift |" in md
    assert {t["key"]: t["pass"] for t in gpu.evaluate_targets(res)}["streaming_fps"] is None


def test_gpu_divergence_names_the_near_tie(tiny_model):
    """divergence(): where two token lists part, and the gap between their logits there, which must be the
    top-1 minus top-2 margin when the second list takes the runner-up."""
    import math

    import prospect_core

    gpu = _gpu()
    model = prospect_core.load_model(tiny_model, dtype="float32")
    ids = torch.arange(60, 64).unsqueeze(0)
    a = list(model.greedy_generate(model.embed_tokens(ids), model.make_cache(32), 6, []).tokens)
    assert len(a) == 6
    # The logits that predict a[3], from one forward pass over the prompt and a's first three tokens.
    seq = torch.cat([ids, torch.tensor([a[:3]])], dim=1)
    logits = model.forward(model.embed_tokens(seq), model.make_cache(32))[0, -1]
    top = torch.topk(logits, 2)
    assert int(top.indices[0]) == a[3]
    b = a[:3] + [int(top.indices[1])] + a[4:]
    d = gpu.divergence(model, ids, a, b)
    assert d["index"] == 3 and d["tokens"] == [a[3], b[3]]
    assert d["gap"] == pytest.approx(float(top.values[0] - top.values[1]), rel=1e-4, abs=1e-5) and d["gap"] >= 0
    assert d["logits"][0] == pytest.approx(float(top.values[0]), rel=1e-4, abs=1e-5)
    size = max(abs(v) for v in d["logits"])
    assert d["bf16_step"] == 2.0 ** (math.floor(math.log2(size)) - 7)
    # Lists that do not part: one the other's prefix, or the same.
    assert gpu.divergence(model, ids, a, a) is None and gpu.divergence(model, ids, a, a[:3]) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_gpu_harness_without_cuda_skips(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/run.py"), "--device", "cuda", "--quick", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped: no CUDA device" in r.stdout
    assert not (tmp_path / "o").exists()


def test_gpu_harness_runs_on_the_cpu(tmp_path):
    """gpu.py's own code paths end to end, on the CPU and the tiny preset (the hidden --device cpu):
    model making, both of our decode variants, the transformers worker (eager), streaming, surgery, reports."""
    r = run_quick("gpu.py", tmp_path, "--device", "cpu", "--no-compile", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[gpu" in r.stdout and "transformers: eager" in r.stdout
    (js,) = tmp_path.glob("gpu-*-quick.json")
    res = json.loads(js.read_text())
    assert res["preset"] == "tiny" and res["dtype"] == "bfloat16" and res["model"]["built"] is True
    assert (tmp_path / "models" / "tiny-bfloat16" / "config.json").exists()
    assert res["ceilings"]["copy_gbs"] > 0 and res["ceilings"]["matmul_tflops"] > 0
    d = res["decode"]
    assert d["floor_ms_per_token"] > 0 and d["weight_bytes_per_token"] > 0
    for v in ("ours_graph", "ours_eager", "transformers_eager"):
        assert d[v]["ms_per_token"] > 0 and d[v]["new_tokens_made"] == 16, (v, d[v])
        assert len(d["tokens"][v]) == 16
    assert d["graph_eager_tokens_equal"] is True  # on the CPU both take the eager loop
    assert d["graph_eager_divergence"] is None  # examined, and nowhere to part
    assert d["transformers_static_compile"] == {"skipped": "not asked for"}
    assert d["speedup_graph_vs_transformers_eager"] > 0
    s = res["streaming"]
    assert s["frames"] == 4 and s["fps"] > 0 and s["tokens_per_frame"] > 16
    assert s["cache_length_end"] <= s["cache_capacity"] and s["cache_length_end"] >= 4 * s["tokens_per_frame"]
    # Per frame: the cache grows by a frame's tokens each time; each third's medians come from its frames.
    lengths = s["runs_cache_length_before"]
    assert lengths[0] == 0 and all(b - a >= s["tokens_per_frame"] for a, b in zip(lengths, lengths[1:]))
    assert len(s["runs_device_ms"]) == len(s["runs_engine_prefill_ms"]) == len(s["runs_ms"]) == 4
    thirds = s["by_third"]
    assert [t["frames"] for t in thirds] == [[0, 0], [1, 1], [2, 3]]
    assert [t["cache_length_from"] for t in thirds] == [lengths[0], lengths[1], lengths[2]]
    assert thirds[2]["host_ms"] == pytest.approx(statistics.median(s["runs_ms"][2:]))
    # Fewer frames than thirds: each frame in one part only.
    two = _gpu()._thirds([1.0, 2.0], [1.0, 2.0], [0.5, 0.5], [0, 9])
    assert [(t["frames"], t["cache_length_from"], t["host_ms"]) for t in two] == [([0, 0], 0, 1.0), ([1, 1], 9, 2.0)]
    rows = {r["variant"]: r for r in res["surgery"]["rows"]}
    assert set(rows) == {"prospect_shift", "prospect_keep", "torch_cat"}
    assert rows["prospect_shift"]["same_storage"] and rows["prospect_keep"]["same_storage"]
    assert not rows["torch_cat"]["same_storage"] and rows["torch_cat"]["length_after"] == 812
    assert [t["key"] for t in res["targets"]][0] == "decode_pct_of_floor"
    md = (tmp_path / js.name.replace(".json", ".md")).read_text()
    assert md.startswith("# prospect GPU benchmarks") and "## Targets" in md and "## Cache surgery" in md
    assert "The first pass by thirds of the stream" in md and f"2-3, from {lengths[2]}:" in md


def test_make_model_device(tmp_path):
    """make_model(device=...): "cpu" is the default, byte for byte; a GPU that is not there is refused."""
    import prospect_core

    a = prospect_core.make_model(tmp_path / "a", "tiny")
    b = prospect_core.make_model(tmp_path / "b", "tiny", device="cpu")
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert hashlib.sha256((a / name).read_bytes()).digest() == hashlib.sha256((b / name).read_bytes()).digest()
    with pytest.raises(ValueError, match="device expected 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        prospect_core.make_model(tmp_path / "c", "tiny", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            prospect_core.make_model(tmp_path / "d", "tiny", device="cuda")
        assert not (tmp_path / "d").exists()
