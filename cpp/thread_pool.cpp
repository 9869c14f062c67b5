#include "thread_pool.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <sched.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define PROSPECT_PAUSE() _mm_pause()
#else
#define PROSPECT_PAUSE() std::this_thread::yield()
#endif

namespace prospect {

namespace {

constexpr int kSpins = 2000;                                // pauses before yielding: a few microseconds
constexpr auto kYieldFor = std::chrono::microseconds(300);  // then yields, then sleep
constexpr uint64_t kClosed = 0xFFFFFFFFu;                   // a claim word's index once its job is over

class Pool {
public:
    explicit Pool(int workers) {
        for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
    }
    int size() const { return static_cast<int>(threads_.size()); }

    // false: another caller holds the pool; run alone.
    bool run(int64_t n, int64_t chunk, void (*call)(const void*, int64_t, int64_t), const void* fn) {
        if (n >= static_cast<int64_t>(kClosed)) return false;
        std::unique_lock<std::mutex> busy(job_mutex_, std::try_to_lock);
        if (!busy.owns_lock()) return false;
        const uint64_t last = claim_.load(std::memory_order_relaxed) >> 32, epoch = (last + 1) & 0xFFFFFFFFu;
        // Close the last job before touching n_: a worker that read its claim word earlier and the new n_
        // after would otherwise claim past the last job's end and run it on the new job's function.
        claim_.store((last << 32) | kClosed);
        n_.store(n, std::memory_order_release);  // a worker that reads these also sees the job closed
        chunk_.store(chunk, std::memory_order_release);
        call_ = call;
        fn_ = fn;
        done_.store(0, std::memory_order_relaxed);
        claim_.store(epoch << 32);  // publishes the job (seq_cst: ordered before the sleepers' check)
        if (sleepers_.load() > 0) {
            std::lock_guard<std::mutex> lock(sleep_mutex_);
            wake_.notify_all();
        }
        work_on(epoch);
        for (int spins = 0; done_.load(std::memory_order_acquire) < n; ++spins) {
            if (spins < kSpins) {
                PROSPECT_PAUSE();
            } else {
                sched_yield();  // a worker mid-chunk may be waiting for this core
            }
        }
        return true;
    }

private:
    // Claims and runs chunks of job `epoch` until none are left; false once the job is over.
    void work_on(uint64_t epoch) {
        uint64_t c = claim_.load(std::memory_order_acquire);
        while ((c >> 32) == epoch) {
            // n and chunk may already be the next job's; then the job is closed and the claim below fails.
            const int64_t begin = static_cast<int64_t>(c & kClosed), n = n_.load(std::memory_order_acquire);
            if (begin >= n) return;
            const int64_t end = std::min(n, begin + chunk_.load(std::memory_order_acquire));
            if (!claim_.compare_exchange_weak(c, (epoch << 32) | static_cast<uint64_t>(end), std::memory_order_acq_rel,
                                              std::memory_order_acquire))
                continue;
            call_(fn_, begin, end);  // the job cannot end before this chunk is counted done
            done_.fetch_add(end - begin, std::memory_order_release);
            c = claim_.load(std::memory_order_acquire);
        }
    }

    void work() {
        uint64_t seen = 0;
        for (;;) {
            seen = wait_for_job(seen);
            work_on(seen);
        }
    }

    uint64_t wait_for_job(uint64_t seen) {
        const auto fresh = [&] { return claim_.load(std::memory_order_acquire) >> 32; };
        for (int i = 0; i < kSpins; ++i) {
            if (fresh() != seen) return fresh();
            PROSPECT_PAUSE();
        }
        const auto until = std::chrono::steady_clock::now() + kYieldFor;
        while (std::chrono::steady_clock::now() < until) {
            if (fresh() != seen) return fresh();
            sched_yield();
        }
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        sleepers_.fetch_add(1);
        wake_.wait(lock, [&] { return fresh() != seen; });
        sleepers_.fetch_sub(1);
        return fresh();
    }

    std::vector<std::thread> threads_;
    std::mutex job_mutex_;  // one job at a time
    // The job: the epoch (high 32 bits, wrapping) and the next unclaimed index (low 32).
    std::atomic<uint64_t> claim_{0};
    std::atomic<int64_t> done_{0};
    std::atomic<int64_t> n_{0}, chunk_{1};
    void (*call_)(const void*, int64_t, int64_t) = nullptr;
    const void* fn_ = nullptr;
    std::mutex sleep_mutex_;
    std::condition_variable wake_;
    std::atomic<int> sleepers_{0};
};

// Made on first use with torch's thread count, remade when it changes or in a forked child (which has
// none of the parent's threads). Never destroyed: workers sleep through exit.
Pool* pool_for_threads(int threads) {
    static std::mutex mutex;
    static Pool* pool = nullptr;
    static pid_t owner = 0;
    std::lock_guard<std::mutex> lock(mutex);
    if (pool == nullptr || pool->size() != threads - 1 || owner != getpid()) {
        pool = new Pool(threads - 1);  // an old pool's sleeping workers stay asleep
        owner = getpid();
    }
    return pool;
}

}  // namespace

namespace detail {

void pool_run(int64_t n, int64_t grain, void (*call)(const void*, int64_t, int64_t), const void* fn) {
    const int threads = at::get_num_threads();
    if (threads <= 1 || n <= grain || at::in_parallel_region()) {
        call(fn, 0, n);
        return;
    }
    // A few chunks per thread: a worker that is late or descheduled leaves less for the caller.
    const int64_t chunk = std::max<int64_t>(grain, (n + 4 * threads - 1) / (4 * threads));
    if (!pool_for_threads(threads)->run(n, chunk, call, fn)) call(fn, 0, n);
}

void aten_run(int64_t n, int64_t chunk, void (*call)(const void*, int64_t, int64_t), const void* fn) {
    const int threads = at::get_num_threads();
    chunk = std::max<int64_t>(chunk, 1);
    if (threads <= 1 || n <= chunk || at::in_parallel_region()) {
        call(fn, 0, n);
        return;
    }
    std::atomic<int64_t> next{0};
    const at::ThreadLocalState state;  // OpenMP's workers do not inherit it: InferenceMode, grad mode
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
        const at::ThreadLocalStateGuard guard(state);
        for (int64_t b; (b = next.fetch_add(chunk)) < n;) call(fn, b, std::min(n, b + chunk));
    });
}

}  // namespace detail

}  // namespace prospect
