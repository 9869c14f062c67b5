"""An outside reference on the same weights: llama.cpp (through llama-cpp-python) decoding the Q4_1
GGUF file that the 256m-smollm2 checkpoint was made from. Quantised weights are read in fewer bytes
per token, so this is a point of comparison, not a target."""

import time

import numpy as np


def gguf_bytes(path):
    """Bytes of all tensors in the file: a decode step reads each layer once, and the tied Q8_0
    embedding in full for the output (the input lookup reads one row)."""
    from gguf import GGUFReader

    return int(sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors))


def bench_llama_cpp(path, threads, repeats, new_tokens=32, prompt=16):
    """Median ms per decoded token (the one-token eval after the prompt), greedy, batch 1."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed (pip install 'prospect[bench]'; it builds from source)"}
    import llama_cpp

    llm = Llama(
        model_path=str(path),
        n_ctx=prompt + new_tokens + 8,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=prompt,
        verbose=False,
    )
    ids = list(range(60, 60 + prompt))
    vocab = llm.n_vocab()
    runs = []
    for _ in range(repeats + 1):  # the first run warms up
        llm.reset()
        llm.eval(ids)
        steps = []
        for _ in range(new_tokens):
            logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)  # the last token's, as llama.cpp left them
            tok = int(np.argmax(np.ctypeslib.as_array(logits, shape=(vocab,))))
            t0 = time.perf_counter()
            llm.eval([tok])
            steps.append((time.perf_counter() - t0) * 1e3)
        runs.append(sum(steps) / len(steps))
    runs = sorted(runs[1:])
    return {
        "llama_cpp_ms_per_token": runs[len(runs) // 2],
        "llama_cpp_bytes_per_token": gguf_bytes(path),
        "llama_cpp_version": llama_cpp.__version__,
        "threads": threads,
        "quantisation": "Q4_1 (Q8_0 embedding)",
    }
