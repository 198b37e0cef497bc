# The build step of the top-level CMakeLists.txt (run under the build folder's lock):
#   cmake -DSETTINGS=<superbuild>/caffe-build-settings.cmake -P tools/caffe_build_step.cmake
# One Caffe build folder serves every checkout with the same key. It is (re)configured when it
# has never been, or when it was last configured for another checkout's layers folder (every
# compile line then changes, so ninja rebuilds everything); then ninja builds the targets.
include("${SETTINGS}")  # CAFFE_SOURCE_DIR, CAFFE_BUILD_DIR, CAFFE_ARGS, LAYERS_DIR, BUILD_TARGETS
set(_configured_for "")
if(EXISTS "${CAFFE_BUILD_DIR}/CMakeCache.txt" AND EXISTS "${CAFFE_BUILD_DIR}/build.ninja")
  file(STRINGS "${CAFFE_BUILD_DIR}/CMakeCache.txt" _line REGEX "^CAFFE_EXTRA_LAYERS_DIR:[A-Z]*=")
  string(REGEX REPLACE "^CAFFE_EXTRA_LAYERS_DIR:[A-Z]*=" "" _configured_for "${_line}")
endif()
if(NOT _configured_for STREQUAL LAYERS_DIR)
  message(STATUS "Configuring ${CAFFE_BUILD_DIR} for ${LAYERS_DIR}")
  execute_process(COMMAND "${CMAKE_COMMAND}" -G Ninja ${CAFFE_ARGS}
                          "-DCAFFE_EXTRA_LAYERS_DIR=${LAYERS_DIR}"
                          -S "${CAFFE_SOURCE_DIR}" -B "${CAFFE_BUILD_DIR}"
                  RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "configuring Caffe in ${CAFFE_BUILD_DIR} failed (output above)")
  endif()
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --build "${CAFFE_BUILD_DIR}" ${BUILD_TARGETS}
                RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "building Caffe in ${CAFFE_BUILD_DIR} failed (output above)")
endif()
