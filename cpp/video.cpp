#include "video.h"

#include "errors.h"

#include <ATen/ops/empty.h>

#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>

namespace prospect {

struct VideoReader::Impl {
    cv::VideoCapture cap;
    cv::Mat bgr;
};

VideoReader::VideoReader(const std::string& path, double fps)
    : impl_(std::make_unique<Impl>()), path_(path), fps_(fps) {
    TORCH_CHECK_VALUE(std::isfinite(fps) && fps > 0, "VideoReader: fps expected > 0, got ", fps);
    namespace fs = std::filesystem;
    if (!fs::exists(path)) throw FileNotFoundError("VideoReader: no such file: '" + path + "'");
    if (fs::is_directory(path)) throw FormatError("VideoReader: '" + path + "' is a directory, not a video file");
    // A FIFO or device would block the decoder forever, waiting for data.
    if (!fs::is_regular_file(path)) throw FormatError("VideoReader: '" + path + "' is not a regular file");
    if (fs::file_size(path) == 0) throw FormatError("VideoReader: '" + path + "' is empty");
    // FFmpeg prints every slice error of a damaged stream; a broken stream is reported once, by next().
    setenv("OPENCV_FFMPEG_LOGLEVEL", "-8", 0);
    if (!impl_->cap.open(path, cv::CAP_ANY) || !impl_->cap.isOpened()) {
        throw FormatError("VideoReader: '" + path + "' could not be opened as a video (damaged or not a video)");
    }
    native_fps_ = impl_->cap.get(cv::CAP_PROP_FPS);
    header_frames_ = static_cast<int64_t>(impl_->cap.get(cv::CAP_PROP_FRAME_COUNT));
    width_ = static_cast<int64_t>(impl_->cap.get(cv::CAP_PROP_FRAME_WIDTH));
    height_ = static_cast<int64_t>(impl_->cap.get(cv::CAP_PROP_FRAME_HEIGHT));
    if (width_ <= 0 || height_ <= 0) {
        throw FormatError("VideoReader: '" + path + "' has no video stream with a frame size");
    }
}

VideoReader::~VideoReader() = default;

std::optional<std::pair<double, at::Tensor>> VideoReader::next() {
    bool idle = false;
    TORCH_CHECK(busy_.compare_exchange_strong(idle, true), "VideoReader '", path_,
                "' is in use by another thread: ", "one reader per thread (open the file once per thread)");
    struct Release {
        std::atomic<bool>& busy;
        ~Release() { busy.store(false); }
    } guard{busy_};
    while (!done_) {
        if (!impl_->cap.read(impl_->bgr) || impl_->bgr.empty()) {
            done_ = true;
            // Containers round their frame counts; a few short is not a broken stream.
            if (header_frames_ > 0 && decoded_ < header_frames_ - std::max<int64_t>(2, header_frames_ / 100)) {
                warning_ = "video '" + path_ + "' stopped decoding after " + std::to_string(decoded_) + " of the " +
                           std::to_string(header_frames_) + " frames its header reports; kept the " +
                           std::to_string(emitted_) + " frames sampled so far";
            }
            if (decoded_ == 0) throw FormatError("VideoReader: '" + path_ + "' holds no decodable frame");
            return std::nullopt;
        }
        // Timestamp by frame index at the native rate: container timestamps are unreliable across codecs.
        const double t = native_fps_ > 0 ? decoded_ / native_fps_ : impl_->cap.get(cv::CAP_PROP_POS_MSEC) / 1000.0;
        ++decoded_;
        if (t + 1e-6 < next_target_) continue;  // not yet at the next sampling time
        next_target_ = (std::floor(t * fps_ + 1e-6) + 1.0) / fps_;
        const auto& m = impl_->bgr;
        TORCH_CHECK_VALUE(m.type() == CV_8UC3 || m.type() == CV_8UC1, "VideoReader: '", path_,
                          "' decodes to an unsupported pixel format");
        auto out = at::empty({m.rows, m.cols, 3}, at::kByte);
        cv::Mat rgb(m.rows, m.cols, CV_8UC3, out.data_ptr());  // decode straight into the tensor
        cv::cvtColor(m, rgb, m.type() == CV_8UC3 ? cv::COLOR_BGR2RGB : cv::COLOR_GRAY2RGB);
        ++emitted_;
        return std::make_pair(t, out);
    }
    return std::nullopt;
}

}  // namespace prospect
