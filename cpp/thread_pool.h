// parallel_for for the decode step's many short loops (about 150 a token) and a prefill's products and
// attention on the CPU. OpenMP's workers spin at each barrier for milliseconds; with another busy
// process on the machine, a descheduled worker then stalls every loop, and the spinning takes CPU from
// the process that would run. Here the work is claimed chunk by chunk, so the caller finishes whatever
// no worker has taken, and idle workers spin briefly, then yield, then sleep. Correct with any number
// of workers awake, even none.
#pragma once

#include <cstdint>

namespace prospect {

namespace detail {
void pool_run(int64_t n, int64_t chunk, void (*call)(const void*, int64_t, int64_t), const void* fn);
void aten_run(int64_t n, int64_t chunk, void (*call)(const void*, int64_t, int64_t), const void* fn);
}  // namespace detail

// fn(begin, end) over [0, n) in chunks of at least `grain`, on the calling thread and the pool's
// workers (at::get_num_threads() in all). Calls from several threads at once are safe: one runs on the
// pool, the others run alone.
template <class F>
void pool_for(int64_t n, int64_t grain, const F& fn) {
    if (n <= 0) return;
    detail::pool_run(
        n, grain, [](const void* f, int64_t b, int64_t e) { (*static_cast<const F*>(f))(b, e); }, &fn);
}

// fn(begin, end) over [0, n) in chunks of `chunk`, claimed one by one by ATen's (OpenMP) threads: for
// work between ATen ops of many rows (the vision tower), whose threads those ops have just woken and
// which would otherwise spin beside a second pool's. (A prefill runs no ATen op of many rows on the
// CPU, so its work is on the pool.) Claimed, not split in halves up front:
// with another process on the cores, a thread that loses its core holds up one chunk, not half the
// work. The workers run with the caller's thread-local state (InferenceMode, grad mode). Inside a
// parallel region it runs on the calling thread.
template <class F>
void aten_for(int64_t n, int64_t chunk, const F& fn) {
    if (n <= 0) return;
    detail::aten_run(
        n, chunk, [](const void* f, int64_t b, int64_t e) { (*static_cast<const F*>(f))(b, e); }, &fn);
}

}  // namespace prospect
