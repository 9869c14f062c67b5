// What an outside probe found in the loader and the video reader, run here too so that the
// sanitizer build (scripts/sanitize.sh) covers these paths.
#include <gtest/gtest.h>

#include "model_loader.h"
#include "safetensors.h"
#ifdef PROSPECT_WITH_OPENCV
#include "video.h"
#endif

#include <sys/stat.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace prospect;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
    const auto d = fs::temp_directory_path() / ("prospect_hardening_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

// A one-tensor safetensors file: `name` of dtype `dtype` holding `bytes`.
void write_safetensors(const fs::path& path, const std::string& name, const std::string& dtype, int64_t count,
                       const std::string& bytes) {
    std::string header = "{\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[" + std::to_string(count) +
                         "],\"data_offsets\":[0," + std::to_string(bytes.size()) + "]}}";
    while (header.size() % 8) header += ' ';
    std::ofstream out(path, std::ios::binary);
    const uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << bytes;
}

}  // namespace

TEST(Loader, RefusesFifosInsteadOfBlocking) {
    const auto d = fresh_dir("fifo");
    ASSERT_EQ(::mkfifo((d / "config.json").c_str(), 0600), 0);
    ASSERT_EQ(::mkfifo((d / "model.safetensors").c_str(), 0600), 0);
    try {
        load_model_config(d.string());
        FAIL() << "config.json as a FIFO was opened";
    } catch (const FormatError& e) {
        EXPECT_NE(std::string(e.what()).find("expected a regular file, got a FIFO"), std::string::npos) << e.what();
    }
    EXPECT_THROW(load_weights(d.string(), at::kFloat, at::kCPU), FormatError);
    fs::remove_all(d);
}

TEST(Loader, RefusesIntegerAndBoolWeights) {
    const auto d = fresh_dir("ints");
    write_safetensors(d / "model.safetensors", "w", "I64", 2, std::string(16, '\1'));
    auto w = load_weights(d.string(), at::kFloat, at::kCPU);
    try {
        w.take("w", {2});
        FAIL() << "an I64 weight was taken";
    } catch (const FormatError& e) {
        EXPECT_NE(std::string(e.what()).find("weight 'w' expected a floating dtype"), std::string::npos) << e.what();
    }
    write_safetensors(d / "model.safetensors", "b", "BOOL", 4, std::string(4, '\1'));
    auto b = load_weights(d.string(), at::kFloat, at::kCPU);
    EXPECT_THROW(b.take("b", {4}), FormatError);
    fs::remove_all(d);
}

#ifdef PROSPECT_WITH_OPENCV
TEST(VideoReader, SharedByThreadsLosesNoFrameAndRefusesTheOverlap) {
    const std::string path = "/usr/share/doc/opencv-doc/examples/data/vtest.avi";
    ASSERT_TRUE(fs::exists(path)) << "needs Debian's opencv-doc (apt-get install opencv-doc)";
    size_t expected = 0;
    {
        VideoReader serial(path, 4.0);
        while (serial.next()) ++expected;
    }
    VideoReader shared(path, 4.0);
    std::mutex m;
    std::multiset<double> times;
    std::atomic<int64_t> refused{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) {
        threads.emplace_back([&] {
            for (;;) {
                try {
                    auto item = shared.next();
                    if (!item) return;
                    std::lock_guard<std::mutex> lock(m);
                    times.insert(item->first);
                } catch (const c10::Error&) {
                    ++refused;  // another thread was inside next(): try again
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(times.size(), expected);
    EXPECT_EQ(std::set<double>(times.begin(), times.end()).size(), expected);  // none twice
}

TEST(VideoReader, RefusesAFifo) {
    const auto d = fresh_dir("video");
    ASSERT_EQ(::mkfifo((d / "clip.avi").c_str(), 0600), 0);
    EXPECT_THROW(VideoReader((d / "clip.avi").string(), 2.0), FormatError);
    fs::remove_all(d);
}
#endif
