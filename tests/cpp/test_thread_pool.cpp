// The pool under preemption: many short jobs back to back while busy threads take the cores, so that
// a worker or the caller loses its core between any two steps of publishing and claiming a job.
#include <gtest/gtest.h>

#include "thread_pool.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

using namespace prospect;

namespace {

// Spins on every core until stopped, so that the pool's threads are descheduled at random points.
class BusyThreads {
public:
    BusyThreads() {
        const unsigned n = std::max(2u, std::thread::hardware_concurrency());
        for (unsigned i = 0; i < n; ++i)
            threads_.emplace_back([this] {
                while (!stop_.load(std::memory_order_relaxed)) {
                }
            });
    }
    ~BusyThreads() {
        stop_ = true;
        for (auto& t : threads_) t.join();
    }

private:
    std::atomic<bool> stop_{false};
    std::vector<std::thread> threads_;
};

}  // namespace

TEST(ThreadPool, EveryIndexOnceAndOnlyDuringItsJobUnderPreemption) {
    const int saved = at::get_num_threads();
    at::set_num_threads(2);
    const BusyThreads busy;
    std::atomic<int64_t> current{-1}, stray{0};
    int64_t wrong_count = 0;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    int64_t jobs = 0;
    for (; std::chrono::steady_clock::now() < until; ++jobs) {
        // Sizes vary so that a stale claim on the last job's end still lies inside the next job's range.
        const int64_t n = 2 + (jobs * 7) % 61;
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        current.store(jobs);
        pool_for(n, 1, [&, job = jobs](int64_t b, int64_t e) {
            if (current.load() != job || b < 0 || e > n || b >= e) {
                stray.fetch_add(1);
                return;
            }
            for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
        });
        current.store(-1);  // from here, any call of this job's function is a stray
        for (const auto& h : hits) wrong_count += h.load() != 1;
        if (stray.load() || wrong_count) break;
    }
    at::set_num_threads(saved);
    EXPECT_EQ(stray.load(), 0) << "chunks ran outside their job, in " << jobs << " jobs";
    EXPECT_EQ(wrong_count, 0) << "indices not run exactly once, in " << jobs << " jobs";
    EXPECT_GT(jobs, 1000);
}
