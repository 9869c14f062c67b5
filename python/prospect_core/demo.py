"""A stream through the cache core: SmolVLM2-256M cache shape, 67 tokens a frame.

Keys and values are random (no model yet): the demo shows the cache's own
behaviour, spans, in-place drop_middle with position shift, and its cost next
to the torch.cat surgery of the original pipeline.
"""

import time

import torch

import prospect_core as pc

# SmolVLM2-256M text decoder: 30 layers, 3 kv heads, head_dim 64, rope_theta 1e5.
LAYERS, KV_HEADS, HEAD_DIM, THETA = 30, 3, 64, 100000.0
FRAME_TOKENS, SYSTEM_TOKENS, USER_TOKENS, REPLY_TOKENS = 67, 24, 12, 18


def _append(cache, n, kind, frame_index=None):
    kv = lambda: [torch.randn(1, KV_HEADS, n, HEAD_DIM) for _ in range(LAYERS)]  # noqa: E731
    return cache.append(kv(), kv(), kind=kind, frame_index=frame_index)


def _describe(spans):
    frames = [s.frame_index for s in spans if s.kind == "frame"]
    pinned = [s.kind for s in spans if s.pinned]
    text = f"pinned {'+'.join(pinned) or '-'}"
    return text + (f", frames {frames[0]}..{frames[-1]}" if frames else ", no frames")


def _cat_drop_middle(legacy, keep_first, keep_last):
    """The original pipeline's surgery: a new tensor per layer."""
    T = legacy[0][0].shape[2]
    return tuple(
        (
            torch.cat([k[:, :, :keep_first], k[:, :, T - keep_last :]], 2),
            torch.cat([v[:, :, :keep_first], v[:, :, T - keep_last :]], 2),
        )
        for k, v in legacy
    )


def run_demo(args) -> int:
    torch.manual_seed(0)
    threshold = args.max_seq_len - args.reserved_seq_len
    cache = pc.KVCache(LAYERS, KV_HEADS, HEAD_DIM, args.max_seq_len, rope_theta=THETA)
    storage = cache.storage.data_ptr()
    print(f"prospect {pc.__version__} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(
        f"{cache!r}\n{cache.capacity_bytes() / 2**20:.0f} MiB preallocated; compress past {threshold} tokens, "
        f"keep the anchor + newest {args.last_keep_len} tokens as whole spans ({args.position_mode} positions)\n"
    )

    cache.pin(_append(cache, SYSTEM_TOKENS, "system"))
    compressions, peak, surgery_ms = 0, 0, []
    for f in range(args.frames):
        if f == 2:  # the first user turn joins the anchor, as in ProAssist's "initial" cache
            cache.pin(_append(cache, USER_TOKENS, "user"))
        _append(cache, FRAME_TOKENS, "frame", frame_index=f)
        if f % 9 == 8:
            _append(cache, REPLY_TOKENS, "assistant", frame_index=f)
        peak = max(peak, cache.length)
        if cache.length > threshold:
            before = cache.length
            t0 = time.perf_counter()
            cache.drop_middle(args.last_keep_len, position_mode=args.position_mode)
            surgery_ms.append((time.perf_counter() - t0) * 1e3)
            compressions += 1
            print(
                f"frame {f:4d}: drop_middle {before} -> {cache.length} tokens in {surgery_ms[-1]:.1f} ms; "
                f"{_describe(cache.spans)}; next_position {cache.next_position}"
            )
    assert cache.storage.data_ptr() == storage, "storage was reallocated"

    # The same surgery the original way, on the same full-cache shape, for comparison.
    full = pc.KVCache(LAYERS, KV_HEADS, HEAD_DIM, args.max_seq_len, rope_theta=THETA)
    _append(full, threshold + 1, "other")
    legacy = full.to_legacy()
    t0 = time.perf_counter()
    out = _cat_drop_middle(legacy, SYSTEM_TOKENS + USER_TOKENS, args.last_keep_len)
    cat_ms = (time.perf_counter() - t0) * 1e3
    cat_bytes = sum(k.nbytes + v.nbytes for k, v in out)

    print(
        f"\n{args.frames} frames, {compressions} compressions, peak {peak} tokens, final {cache.length} tokens; "
        f"storage never reallocated ({cache.capacity_bytes() / 2**20:.0f} MiB)"
    )
    if surgery_ms:
        print(
            f"in-place drop_middle: median {sorted(surgery_ms)[len(surgery_ms) // 2]:.1f} ms, 0 bytes allocated "
            f"for the cache; torch.cat drop_middle on the same shape: {cat_ms:.1f} ms, "
            f"{cat_bytes / 2**20:.1f} MiB of new tensors"
        )
    return 0
