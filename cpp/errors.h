// The exception types the core throws for bad input, apart from c10's (TORCH_CHECK_VALUE and
// friends). Torch-free, so the parsers and their fuzz targets use them too.
#pragma once

#include <stdexcept>
#include <string>

namespace prospect {

// A file that is not what it claims to be. Reaches Python as ValueError.
struct FormatError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// A path that does not exist. Reaches Python as FileNotFoundError.
struct FileNotFoundError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Bytes outside printable ASCII as \xNN, so an error message quoting a hostile
// file stays valid UTF-8 on its way into Python.
std::string printable(const std::string& s);

}  // namespace prospect
