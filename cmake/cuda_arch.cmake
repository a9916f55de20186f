# Resolve the CUDA architectures to build for.
#
# Honours CMAKE_CUDA_ARCHITECTURES when given, else TORCH_CUDA_ARCH_LIST (torch's syntax:
# "8.0;8.6;9.0+PTX" or space separated), else the default "8.0;8.6;9.0+PTX". "+PTX" keeps
# the PTX of that architecture so newer GPUs can JIT it.
function(ferfast_resolve_cuda_archs out_var)
  if(CMAKE_CUDA_ARCHITECTURES AND NOT CMAKE_CUDA_ARCHITECTURES STREQUAL "52")
    set(${out_var} "${CMAKE_CUDA_ARCHITECTURES}" PARENT_SCOPE)
    return()
  endif()
  set(_list "$ENV{TORCH_CUDA_ARCH_LIST}")
  if(NOT _list)
    set(_list "8.0;8.6;9.0+PTX")
  endif()
  string(REPLACE " " ";" _list "${_list}")
  set(_archs "")
  foreach(_a IN LISTS _list)
    if(_a STREQUAL "")
      continue()
    endif()
    string(FIND "${_a}" "+PTX" _ptx)
    string(REPLACE "+PTX" "" _num "${_a}")
    string(REPLACE "." "" _num "${_num}")
    if(NOT _num MATCHES "^[0-9]+[af]?$")
      message(FATAL_ERROR "ferfast: bad entry '${_a}' in TORCH_CUDA_ARCH_LIST")
    endif()
    if(_ptx GREATER -1)
      list(APPEND _archs "${_num}")          # SASS + PTX
    else()
      list(APPEND _archs "${_num}-real")     # SASS only
    endif()
  endforeach()
  set(${out_var} "${_archs}" PARENT_SCOPE)
endfunction()
