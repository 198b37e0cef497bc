# The build step of the top-level CMakeLists.txt (run under the build folder's lock):
#   cmake -DSETTINGS=<superbuild>/caffe-build-settings.cmake -P tools/caffe_build/build_step.cmake
# One Caffe build folder serves every checkout with the same key. The checkout's C++/CUDA layer
# sources (LAYERS_DIR/include, LAYERS_DIR/src) are first synced into a mirror beside the build
# folder: a file is written only when its content differs, and files gone from the checkout are
# removed. The build is configured for the mirror, never for a checkout, so switching checkouts
# (a fresh clone, CI, a second worktree) recompiles only the files whose content differs. The
# folder is (re)configured when it has never been or was configured for another folder (builds
# made before the mirror: one full rebuild); then ninja builds the targets.
include("${SETTINGS}")  # CAFFE_SOURCE_DIR, CAFFE_BUILD_DIR, CAFFE_ARGS, LAYERS_DIR, BUILD_TARGETS
set(_mirror "${CAFFE_BUILD_DIR}-layers")
set(FROM "${LAYERS_DIR}")
set(TO "${_mirror}")
include("${CMAKE_CURRENT_LIST_DIR}/sync_layers.cmake")
set(LAYERS_DIR "${_mirror}")
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
