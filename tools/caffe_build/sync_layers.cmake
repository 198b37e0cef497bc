# Syncs a layers folder's C++/CUDA sources (FROM/include, FROM/src) into the mirror TO: a file is
# written only when its content differs (so an unchanged file keeps its time stamp and ninja does
# not recompile it), and a file of TO that FROM no longer has is removed. Included by
# tools/caffe_build/build_step.cmake; on its own: cmake -DFROM=layers -DTO=<mirror> -P tools/caffe_build/sync_layers.cmake
cmake_minimum_required(VERSION 3.21)  # file(COPY_FILE ... ONLY_IF_DIFFERENT), if(IN_LIST)
file(GLOB_RECURSE _want RELATIVE "${FROM}" "${FROM}/include/*" "${FROM}/src/*")
if(NOT _want)
  message(FATAL_ERROR "${FROM} has no include/ or src/ files: is it this project's layers folder?")
endif()
if(EXISTS "${TO}")
  file(GLOB_RECURSE _have RELATIVE "${TO}" "${TO}/*")
  foreach(_f IN LISTS _have)
    if(NOT _f IN_LIST _want)
      file(REMOVE "${TO}/${_f}")
    endif()
  endforeach()
endif()
foreach(_f IN LISTS _want)
  get_filename_component(_dir "${TO}/${_f}" DIRECTORY)
  file(MAKE_DIRECTORY "${_dir}")
  file(COPY_FILE "${FROM}/${_f}" "${TO}/${_f}" ONLY_IF_DIFFERENT)
endforeach()
