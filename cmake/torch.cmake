# Locate the installed torch through the Python interpreter and expose it as imported targets.
#
# torch's own TorchConfig.cmake is not used: for a CUDA build of torch it demands a full CUDA
# toolkit (nvrtc, cuBLAS headers) even for a CPU-only build, and it injects its own -gencode
# flags. An op library needs only torch's headers and four shared libraries, and the libraries
# are already loaded by `import torch` before ferfast loads _C.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__); print(torch.version.cuda or ''); print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
  OUTPUT_VARIABLE _torch_info
  OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _torch_rc)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "ferfast: cannot import torch with ${Python_EXECUTABLE}; build with --no-build-isolation "
                      "inside the environment that has torch")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(GET _torch_info 0 TORCH_ROOT)
list(GET _torch_info 1 TORCH_VERSION)
list(LENGTH _torch_info _n)
if(_n EQUAL 4)
  list(GET _torch_info 2 TORCH_CUDA_VERSION)
  list(GET _torch_info 3 TORCH_CXX11_ABI)
else()  # empty CUDA version line was stripped
  set(TORCH_CUDA_VERSION "")
  list(GET _torch_info 2 TORCH_CXX11_ABI)
endif()

add_library(ferfast_torch INTERFACE)
target_include_directories(ferfast_torch SYSTEM INTERFACE
  "${TORCH_ROOT}/include" "${TORCH_ROOT}/include/torch/csrc/api/include")
target_compile_definitions(ferfast_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI})
target_link_libraries(ferfast_torch INTERFACE
  "${TORCH_ROOT}/lib/libc10.so" "${TORCH_ROOT}/lib/libtorch_cpu.so" "${TORCH_ROOT}/lib/libtorch.so")

add_library(ferfast_torch_cuda INTERFACE)
if(EXISTS "${TORCH_ROOT}/lib/libc10_cuda.so")
  target_link_libraries(ferfast_torch_cuda INTERFACE
    "${TORCH_ROOT}/lib/libc10_cuda.so" "${TORCH_ROOT}/lib/libtorch_cuda.so")
endif()
