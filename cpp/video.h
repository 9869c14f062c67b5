// Decoding a video file with OpenCV and sampling it at a target fps by timestamp.
// Only this file and video.cpp see OpenCV; the build leaves them out without it.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace prospect {

class VideoReader {
public:
    // Throws FileNotFoundError if missing, FormatError if empty or not a video.
    VideoReader(const std::string& path, double fps);
    ~VideoReader();

    // The next sampled frame: (seconds, [H, W, 3] uint8 RGB), or nullopt at the end.
    // Holds one decoded frame at a time. One thread at a time: a call while another
    // thread is inside next() raises RuntimeError (the decoder is not thread-safe).
    std::optional<std::pair<double, at::Tensor>> next();

    const std::string& path() const { return path_; }
    double fps() const { return fps_; }
    double native_fps() const { return native_fps_; }
    int64_t header_frames() const { return header_frames_; }  // what the container claims
    int64_t frames_decoded() const { return decoded_; }
    int64_t width() const { return width_; }
    int64_t height() const { return height_; }
    // Set when decoding stopped well before the frame count the header reports.
    const std::string& warning() const { return warning_; }

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::string path_, warning_;
    double fps_, native_fps_ = 0;
    int64_t header_frames_ = 0, decoded_ = 0, emitted_ = 0, width_ = 0, height_ = 0;
    double next_target_ = 0;  // seconds of the next sample
    bool done_ = false;
    std::atomic<bool> busy_{false};
};

}  // namespace prospect
