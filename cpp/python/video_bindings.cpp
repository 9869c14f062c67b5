// Frames: preprocessing (always) and the OpenCV VideoReader (when built with it).
#include "bindings.h"

#include "frame_preprocess.h"
#ifdef PROSPECT_WITH_OPENCV
#include "video.h"
#endif

namespace prospect {

namespace {

#ifdef PROSPECT_WITH_OPENCV
// VideoReader.__next__: decodes without the GIL; at the end, the reader's warning (if any) as a RuntimeWarning.
py::tuple video_next(VideoReader& r) {
    std::optional<std::pair<double, at::Tensor>> item;
    {
        py::gil_scoped_release nogil;
        item = r.next();
    }
    if (!item) {
        if (!r.warning().empty()) {
            if (PyErr_WarnEx(PyExc_RuntimeWarning, r.warning().c_str(), 1) != 0) throw py::error_already_set();
        }
        throw py::stop_iteration();
    }
    return py::make_tuple(item->first, item->second);
}

void bind_video_reader(py::module_& m) {
    py::class_<VideoReader>(m, "VideoReader", R"doc(
Decodes a video with OpenCV and yields (seconds, frame [H, W, 3] uint8 RGB) sampled at `fps`
by timestamp, holding one frame at a time. A stream that breaks off ends with the frames read
so far and a RuntimeWarning that says how many frames the header promised.)doc")
        .def(py::init<const std::string&, double>(), py::arg("path"), py::arg("fps") = 2.0)
        .def("__iter__", [](VideoReader& r) -> VideoReader& { return r; })
        .def("__next__", &video_next)
        .def_property_readonly("path", &VideoReader::path)
        .def_property_readonly("fps", &VideoReader::fps)
        .def_property_readonly("native_fps", &VideoReader::native_fps)
        .def_property_readonly("header_frames", &VideoReader::header_frames)
        .def_property_readonly("frames_decoded", &VideoReader::frames_decoded)
        .def_property_readonly("width", &VideoReader::width)
        .def_property_readonly("height", &VideoReader::height)
        .def_property_readonly("warning", &VideoReader::warning);
}
#endif

}  // namespace

void bind_video(py::module_& m) {
    m.attr("has_opencv") =
#ifdef PROSPECT_WITH_OPENCV
        true;
#else
        false;
#endif

    m.def(
        "preprocess_frame",
        [](const at::Tensor& frame, int64_t longest_edge, int64_t image_size, std::array<double, 3> mean,
           std::array<double, 3> std, const std::string& resample) {
            const auto f = resample_filter_from_name(resample);
            py::gil_scoped_release nogil;
            return preprocess_frame(frame, longest_edge, image_size, mean, std, f);
        },
        py::arg("frame"), py::arg("longest_edge"), py::arg("image_size"),
        py::arg("mean") = std::array<double, 3>{0.5, 0.5, 0.5}, py::arg("std") = std::array<double, 3>{0.5, 0.5, 0.5},
        py::arg("resample") = "lanczos", R"doc(
frame [H, W, 3] uint8 RGB -> pixel_values [1, 1, 3, image_size, image_size] float32, as the
SmolVLM2 video processor: longest edge to longest_edge, then image_size x image_size, both
antialiased (lanczos or bicubic), rescaled by 1/255 and normalised.)doc");

    m.def(
        "resize_antialias",
        [](const at::Tensor& img, int64_t h, int64_t w, const std::string& resample) {
            return resize_antialias(img, h, w, resample_filter_from_name(resample));
        },
        py::arg("image"), py::arg("height"), py::arg("width"), py::arg("resample") = "lanczos",
        "image [H, W, C] uint8 -> [height, width, C] uint8, separable antialiased resampling.");

#ifdef PROSPECT_WITH_OPENCV
    bind_video_reader(m);
#endif
}

}  // namespace prospect
