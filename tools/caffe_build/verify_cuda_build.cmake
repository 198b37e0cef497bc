# cmake -DLIBRARY=.../libcaffe.so -P tools/caffe_build/verify_cuda_build.cmake
# Fails unless the library is a CUDA build holding this project's kernels: it must need the
# CUDA runtime, cuBLAS, cuRAND and NCCL (multi-GPU training), and contain the device code of every layer of layers/.
execute_process(COMMAND readelf -d "${LIBRARY}" OUTPUT_VARIABLE _dynamic RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "cannot read ${LIBRARY}")
endif()
foreach(_lib cudart cublas curand nccl)
  if(NOT _dynamic MATCHES "lib${_lib}")
    message(FATAL_ERROR "${LIBRARY} does not link lib${_lib}: Caffe was built without CUDA "
                        "(see 'CUDA is not detected' in the configure output)")
  endif()
endforeach()
execute_process(COMMAND nm -C "${LIBRARY}" OUTPUT_VARIABLE _symbols)
foreach(_kernel TQNForward TQNBackward TripletLossForward TripletLossBackward
                DSHLossForward DSHLossBackward PiecewiseThresholdForward
                PiecewiseThresholdBackward PairwiseCosineBackward PQAssign PQBackwardBottom)
  if(NOT _symbols MATCHES "${_kernel}")
    message(FATAL_ERROR "${LIBRARY} holds no ${_kernel} kernel: the layers' .cu files were not compiled")
  endif()
endforeach()
# `caffe train -gpu all` needs Caffe's NCCL code path compiled in, not only the library linked.
if(NOT _symbols MATCHES "caffe::NCCL<float>::Run")
  message(FATAL_ERROR "${LIBRARY} holds no caffe::NCCL<float>::Run: Caffe was built with USE_NCCL=OFF")
endif()
message(STATUS "CUDA build verified: ${LIBRARY} links cudart, cuBLAS, cuRAND, NCCL and holds the layers' kernels")
