"""All of prospect's benchmarks in one run: decode, the bandwidth floor, the streaming step, cache
surgery, long streams, and (part "quant", benchmarks/quant.py) quantized decoders against fp32 and
llama.cpp, contention and frame skipping. Every comparison is measured in this run, next to its baseline.

usage: python benchmarks/run.py [--presets tiny,256m,256m-smollm2] [--dtypes float32] [--repeats 5] [--quick]
                                [--parts decode,streaming,surgery,long_stream,quant]
       python benchmarks/run.py --device cuda [--quick] [--repeats 3] [--deadline 150]
Writes benchmarks/results/<host>-<cpu>-<date>.json and .md (e.g. vm-intel-xeon-2026-11-23), and the
long-stream plot. With --device cuda it runs benchmarks/gpu.py instead (decode, streaming step and cache
surgery on the GPU, the 2.2b preset in bf16) and writes gpu-<date>.json and .md; --quick makes that the tiny
preset with one repetition, and on a machine without CUDA it says so and exits 0.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import machine, matmul_gflops, memory_bandwidth_gbs, unused_path  # noqa: E402

PARTS = ["decode", "streaming", "surgery", "long_stream", "quant"]


def model_dir(preset, root):
    import prospect_core

    d = Path(root) / preset
    # A 256m-smollm2 folder made before weights="gguf" existed lacks the GGUF copy: make it again.
    if not (d / "config.json").exists() or (preset == "256m-smollm2" and not (d / "model.gguf").exists()):
        prospect_core.make_model(d, preset)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,256m,256m-smollm2")
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--repeats", type=int, default=None, help="repetitions (default 5; 3 with --device cuda)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny shapes, one repetition")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"which benchmarks (default all: {','.join(PARTS)})")
    ap.add_argument("--models", default=str(HERE.parent / "build" / "models"))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cpu: the benchmarks above; cuda: benchmarks/gpu.py (--presets, --dtypes and --parts do not apply)",
    )
    ap.add_argument("--deadline", type=float, default=150.0, help="--device cuda: seconds for the whole run")
    a = ap.parse_args()
    if a.device == "cuda":
        import gpu

        command = " ".join(["python benchmarks/run.py"] + sys.argv[1:])
        sys.exit(gpu.main(a.out, a.models, a.quick, a.repeats, a.deadline, "cuda", command=command))
    if a.repeats is None:
        a.repeats = 5
    if a.quick:
        a.presets, a.repeats = "tiny", 1
    parts = a.parts.split(",")
    if not set(parts) <= set(PARTS):
        ap.error(f"--parts expected names from {','.join(PARTS)}, got {a.parts}")

    from decode import bench_decode
    from long_stream import bench_long_stream, plot_long_stream
    from streaming import bench_streaming

    date = datetime.date.today().isoformat()
    m = machine()
    res = {"date": date, "machine": m, "command": " ".join(["python benchmarks/run.py"] + sys.argv[1:])}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = unused_path(
        out, f"{m['slug']}-{date}" + ("-quick" if a.quick else "") + ("" if parts == PARTS else "-" + "-".join(parts))
    ).stem
    bw = memory_bandwidth_gbs(64 if a.quick else 1024)
    roof = matmul_gflops(512 if a.quick else 3072)
    res["memory_bandwidth_gbs"], res["matmul_gflops"] = bw, roof
    print(f"machine: {m['cpu']}, {m['threads']} threads; bandwidth {bw:.1f} GB/s; matmul {roof:.1f} GFLOP/s")

    res["decode"] = []
    for preset in a.presets.split(",") if "decode" in parts else []:
        path = model_dir(preset, a.models)
        for dtype in a.dtypes.split(","):
            row = bench_decode(path, dtype, a.repeats, new_tokens=8 if a.quick else 32)
            row.update(preset=preset, dtype=dtype)
            row["floor_ms_per_token"] = row["weight_bytes_per_token"] / (bw * 1e9) * 1e3
            row["prospect_fraction_of_floor"] = row["floor_ms_per_token"] / row["prospect_ms_per_token"]
            row["speedup_vs_generate"] = row["transformers_generate_ms_per_token"] / row["prospect_ms_per_token"]
            row["speedup_vs_original_loop"] = row["original_loop_ms_per_token"] / row["prospect_ms_per_token"]
            res["decode"].append(row)
            print(
                f"decode {preset} {dtype}: prospect {row['prospect_ms_per_token']:.2f} ms/token "
                f"({1e3 / row['prospect_ms_per_token']:.0f} tok/s), generate() "
                f"{row['transformers_generate_ms_per_token']:.2f}, original loop "
                f"{row['original_loop_ms_per_token']:.2f}; floor {row['floor_ms_per_token']:.2f} ms "
                f"({100 * row['prospect_fraction_of_floor']:.0f}% of it)"
            )

    if "decode" in parts and "256m-smollm2" in a.presets.split(","):
        # llama.cpp on the Q4_1 file the 256m-smollm2 text weights came from, at the same thread count.
        import torch

        from llama_cpp_ref import bench_llama_cpp
        from prospect_core.tools import smollm2

        ref = bench_llama_cpp(smollm2.gguf_path(), torch.get_num_threads(), a.repeats, new_tokens=8 if a.quick else 32)
        ours = next(r for r in res["decode"] if r["preset"] == "256m-smollm2" and r["dtype"] == "float32")
        if "skipped" not in ref:
            ref["llama_cpp_fraction_of_floor"] = (
                ref["llama_cpp_bytes_per_token"] / (bw * 1e9) * 1e3 / ref["llama_cpp_ms_per_token"]
            )
            ref["prospect_fp32_vs_llama_cpp"] = ref["llama_cpp_ms_per_token"] / ours["prospect_ms_per_token"]
            print(
                f"decode reference: llama.cpp Q4_1 {ref['llama_cpp_ms_per_token']:.2f} ms/token, "
                f"{ref['llama_cpp_bytes_per_token'] / 1e6:.0f} MB/token vs prospect fp32 "
                f"{ours['prospect_ms_per_token']:.2f} ms/token, {ours['weight_bytes_per_token'] / 1e6:.0f} MB/token"
            )
        else:
            print(f"decode reference: {ref['skipped']}")
        res["decode_reference"] = ref

    video = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
    res["streaming"] = []
    for preset in a.presets.split(",") if "streaming" in parts else []:
        if preset == "256m-smollm2":
            continue  # its vision side is the 256m preset's, measured already
        # The 256m vision tower costs about a second a frame here: fewer frames and repeats.
        big = preset != "tiny"
        row = bench_streaming(
            model_dir(preset, a.models),
            video,
            frames=4 if a.quick else 8 if big else 12,
            repeats=min(a.repeats, 3) if big else a.repeats,
        )
        row["preset"] = preset
        row["speedup"] = row["transformers_ms_per_frame"] / row["prospect_ms_per_frame"]
        row["vision_gflops"] = row["vision_gflop_per_frame"] / (row["prospect_vision_ms"] / 1e3)
        row["vision_fraction_of_matmul_roof"] = row["vision_gflops"] / roof
        res["streaming"].append(row)
        print(
            f"streaming {preset}: prospect {row['prospect_ms_per_frame']:.1f} ms/frame, transformers "
            f"{row['transformers_ms_per_frame']:.1f} ({row['speedup']:.2f}x); vision "
            f"{row['vision_gflops']:.1f} GFLOP/s = {100 * row['vision_fraction_of_matmul_roof']:.0f}% of the roof"
        )

    if "surgery" in parts:
        surgery_args = ["--repeats", str(a.repeats if not a.quick else 1)]
        if a.quick:
            surgery_args += ["--layers", "2", "--kv-heads", "2", "--tokens", "1024"]
        sfile = unused_path(out, f"{stem}-surgery")
        subprocess.run(
            [sys.executable, str(HERE / "surgery.py"), "--json", str(sfile)] + surgery_args,
            check=True,
            capture_output=True,
        )
        res["surgery"] = json.loads(sfile.read_text())
        for r in res["surgery"]["rows"]:
            print(
                f"surgery {r['variant']}: {r['median_ms']:.1f} ms, extra peak {r['median_extra_peak_mb']:.1f} MiB "
                f"({100 * r['extra_peak_fraction']:.2f}% of the cache)"
            )

    if "long_stream" in parts:
        ls = bench_long_stream(model_dir("tiny", a.models), frames=60 if a.quick else 1000)
        plot_long_stream(ls, out / f"{stem}-long-stream.png")
        res["long_stream"] = {
            k: {
                "frames": v["frames"],
                "median_ms": sorted(v["ms"])[len(v["ms"]) // 2],
                "max_cache_len": max(v["cache_len"]),
                "last_100_median_ms": sorted(v["ms"][-100:])[len(v["ms"][-100:]) // 2],
            }
            for k, v in ls.items()
        }
        for k, v in res["long_stream"].items():
            print(
                f"long stream {k}: {v['frames']} frames, median {v['median_ms']:.1f} ms/frame, "
                f"last 100 {v['last_100_median_ms']:.1f}, max cache {v['max_cache_len']}"
            )

    if "quant" in parts:
        import quant

        path = model_dir("256m-smollm2", a.models)
        res["quant"] = quant.bench(path, path / "model.gguf", bw, roof, quick=a.quick, rounds=1 if a.quick else 3)
        print(quant.markdown(res["quant"]))

    (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    (out / f"{stem}.md").write_text(markdown(res) + (quant.markdown(res["quant"]) if "quant" in res else ""))
    print(f"wrote {out / (stem + '.json')} and .md")


def _section(title, header, rows):
    """A markdown section: heading, then a table of header and rows (lists of cells)."""
    return ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows
    ]


def markdown(res):
    m = res["machine"]
    lines = [
        f"# prospect benchmarks, {res['date']}",
        "",
        f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}. `{res['command']}`",
        "",
        f"Memory bandwidth (best of 5 reductions): {res['memory_bandwidth_gbs']:.1f} GB/s; "
        f"fp32 matmul roof: {res['matmul_gflops']:.1f} GFLOP/s.",
    ]
    if res["decode"]:
        lines += _section(
            "Decode (batch 1, greedy)",
            [
                "preset",
                "dtype",
                "prospect ms/tok",
                "tok/s",
                "generate() ms/tok",
                "original loop ms/tok",
                "vs generate",
                "vs original",
                "floor ms/tok",
                "% of floor",
            ],
            [
                [
                    r["preset"],
                    r["dtype"],
                    f"{r['prospect_ms_per_token']:.2f}",
                    f"{1e3 / r['prospect_ms_per_token']:.0f}",
                    f"{r['transformers_generate_ms_per_token']:.2f}",
                    f"{r['original_loop_ms_per_token']:.2f}",
                    f"{r['speedup_vs_generate']:.2f}x",
                    f"{r['speedup_vs_original_loop']:.2f}x",
                    f"{r['floor_ms_per_token']:.2f}",
                    f"{100 * r['prospect_fraction_of_floor']:.0f}%",
                ]
                for r in res["decode"]
            ],
        )
    ref = res.get("decode_reference")
    if ref and "skipped" not in ref:
        ours = next(r for r in res["decode"] if r["preset"] == "256m-smollm2" and r["dtype"] == "float32")
        lines += _section(
            "Outside reference: llama.cpp on the same weights (256m-smollm2's GGUF)",
            ["engine", "weights", "MB read/token", "ms/token", "tok/s", "% of floor"],
            [
                [
                    "prospect",
                    "fp32 (dequantised)",
                    f"{ours['weight_bytes_per_token'] / 1e6:.0f}",
                    f"{ours['prospect_ms_per_token']:.2f}",
                    f"{1e3 / ours['prospect_ms_per_token']:.0f}",
                    f"{100 * ours['prospect_fraction_of_floor']:.0f}%",
                ],
                [
                    f"llama.cpp {ref['llama_cpp_version']}",
                    ref["quantisation"],
                    f"{ref['llama_cpp_bytes_per_token'] / 1e6:.0f}",
                    f"{ref['llama_cpp_ms_per_token']:.2f}",
                    f"{1e3 / ref['llama_cpp_ms_per_token']:.0f}",
                    f"{100 * ref['llama_cpp_fraction_of_floor']:.0f}%",
                ],
            ],
        )
    if res["streaming"]:
        lines += _section(
            "Streaming step (preprocess + vision + prefill + talk decision, vtest.avi)",
            [
                "preset",
                "tokens/frame",
                "prospect ms/frame",
                "transformers ms/frame",
                "speed-up",
                "preprocess ms (ours / theirs)",
                "vision ms (ours / theirs)",
                "vision GFLOP/s",
                "% of matmul roof",
            ],
            [
                [
                    r["preset"],
                    r["tokens_per_frame"],
                    f"{r['prospect_ms_per_frame']:.1f}",
                    f"{r['transformers_ms_per_frame']:.1f}",
                    f"{r['speedup']:.2f}x",
                    f"{r['prospect_preprocess_ms']:.1f} / {r['transformers_preprocess_ms']:.1f}",
                    f"{r['prospect_vision_ms']:.1f} / {r['transformers_vision_ms']:.1f}",
                    f"{r['vision_gflops']:.1f}",
                    f"{100 * r['vision_fraction_of_matmul_roof']:.0f}%",
                ]
                for r in res["streaming"]
            ],
        )
    if "surgery" in res:
        sh = res["surgery"]["shape"]
        lines += _section(
            f"Cache surgery: drop_middle on {sh['layers']} layers x {sh['kv_heads']} kv heads x "
            f"{sh['tokens']} tokens x {sh['head_dim']} (fp32), keeping {sh['keep_first']} + "
            f"{sh['keep_last']}",
            ["variant", "ms", "extra peak MiB", "extra peak / cache"],
            [
                [
                    r["variant"],
                    f"{r['median_ms']:.1f}",
                    f"{r['median_extra_peak_mb']:.1f}",
                    f"{100 * r['extra_peak_fraction']:.2f}%",
                ]
                for r in res["surgery"]["rows"]
            ],
        )
    if "long_stream" in res:
        lines += _section(
            "Long stream (tiny preset)",
            ["strategy", "frames", "median ms/frame", "last 100 median", "max cache"],
            [
                [k, v["frames"], f"{v['median_ms']:.1f}", f"{v['last_100_median_ms']:.1f}", v["max_cache_len"]]
                for k, v in res["long_stream"].items()
            ],
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
