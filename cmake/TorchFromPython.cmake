# Finds the torch that the build's Python imports and defines imported targets
# for it. We do not call find_package(Torch): the PyPI wheel is a CUDA build and
# its CMake config insists on a CUDA toolkit, which a CPU user may not have.
#
# Defines: prospect::torch (libtorch, libtorch_cpu, libc10, ABI flag, headers),
#          prospect::torch_python, TORCH_VERSION, TORCH_LIB_DIR, and TORCH_CUDA_VERSION
#          (empty for a CPU-only torch).

set(_fix "Install with a plain `pip install .` (pip brings torch into the build), or install torch >= 2.11 first and build with: pip install --no-build-isolation .")

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import os, torch, torch.utils; print(torch.__version__.split('+')[0]); print(torch.utils.cmake_prefix_path); print(int(torch.compiled_with_cxx11_abi())); print(os.path.dirname(torch.__file__)); print(torch.version.cuda or '')"
  OUTPUT_VARIABLE _torch_out
  ERROR_VARIABLE _torch_err
  RESULT_VARIABLE _torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR
    "prospect: the Python that builds prospect (${Python_EXECUTABLE}) cannot import torch.\n"
    "${_fix}\n(python said: ${_torch_err})")
endif()
string(REPLACE "\n" ";" _torch_out "${_torch_out}")
list(GET _torch_out 0 TORCH_VERSION)
list(GET _torch_out 1 _torch_cmake_prefix)
list(GET _torch_out 2 _torch_cxx11_abi)
list(GET _torch_out 3 _torch_root)
set(TORCH_CUDA_VERSION "")
list(LENGTH _torch_out _torch_n)
if(_torch_n GREATER 4)
  list(GET _torch_out 4 TORCH_CUDA_VERSION)
endif()

if(TORCH_VERSION VERSION_LESS 2.11)
  message(FATAL_ERROR "prospect needs torch >= 2.11; ${Python_EXECUTABLE} imports torch ${TORCH_VERSION}. ${_fix}")
endif()

# A libtorch named explicitly (Torch_DIR) must be the one Python imports, or the
# extension would load against a different ABI at run time.
set(_torch_config_version "${_torch_cmake_prefix}/Torch/TorchConfigVersion.cmake")
if(DEFINED Torch_DIR AND EXISTS "${Torch_DIR}/TorchConfigVersion.cmake")
  set(_torch_config_version "${Torch_DIR}/TorchConfigVersion.cmake")
endif()
if(EXISTS "${_torch_config_version}")
  file(STRINGS "${_torch_config_version}" _pv REGEX "PACKAGE_VERSION \"")
  string(REGEX MATCH "[0-9]+\\.[0-9]+\\.[0-9]+" _cmake_torch_version "${_pv}")
  if(_cmake_torch_version AND NOT _cmake_torch_version VERSION_EQUAL TORCH_VERSION)
    message(FATAL_ERROR
      "prospect: libtorch at ${_torch_config_version} is ${_cmake_torch_version}, "
      "but ${Python_EXECUTABLE} imports torch ${TORCH_VERSION}. Unset Torch_DIR, or build with the Python "
      "whose torch you want: <python> -m pip install --no-build-isolation .")
  endif()
endif()

set(TORCH_LIB_DIR "${_torch_root}/lib")
set(_torch_includes "${_torch_root}/include" "${_torch_root}/include/torch/csrc/api/include")
foreach(_lib c10 torch_cpu torch torch_python)
  # Not cached across configures: an isolated `pip install .` and a later --no-build-isolation one share
  # the build dir but not the torch they build against.
  unset(PROSPECT_LIB_${_lib} CACHE)
  find_library(PROSPECT_LIB_${_lib} NAMES ${_lib} PATHS "${TORCH_LIB_DIR}" NO_DEFAULT_PATH)
  if(NOT PROSPECT_LIB_${_lib})
    message(FATAL_ERROR "prospect: lib${_lib}.so not found in ${TORCH_LIB_DIR}. Reinstall torch. ${_fix}")
  endif()
endforeach()

add_library(prospect::torch INTERFACE IMPORTED)
target_include_directories(prospect::torch SYSTEM INTERFACE ${_torch_includes})
target_link_libraries(prospect::torch INTERFACE
  "${PROSPECT_LIB_torch}" "${PROSPECT_LIB_torch_cpu}" "${PROSPECT_LIB_c10}")
target_compile_definitions(prospect::torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${_torch_cxx11_abi})

add_library(prospect::torch_python INTERFACE IMPORTED)
target_link_libraries(prospect::torch_python INTERFACE prospect::torch "${PROSPECT_LIB_torch_python}")

message(STATUS "prospect: torch ${TORCH_VERSION} from ${_torch_root} (cxx11 abi ${_torch_cxx11_abi}, CUDA '${TORCH_CUDA_VERSION}')")
