#ifndef CAFFE_TRIPLET_INPUT_CHECKS_HPP_
#define CAFFE_TRIPLET_INPUT_CHECKS_HPP_

#include <cmath>
#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/common.hpp"

namespace caffe {

/// Checks that the anchor, positive and negative bottoms of a triplet loss
/// have one shape with at least one row; fails naming the layer otherwise.
template <typename Dtype>
void CheckTripletBottomShapes(const std::string& layer_name,
    const vector<Blob<Dtype>*>& bottom) {
  static const char* kNames[3] = {"anchor", "positive", "negative"};
  CHECK_GE(bottom[0]->num_axes(), 1) << "Layer '" << layer_name
      << "': the anchor bottom needs a batch axis (bs x N)";
  CHECK_GT(bottom[0]->shape(0), 0) << "Layer '" << layer_name
      << "': the batch is empty";
  for (int b = 1; b < 3; ++b) {
    CHECK(bottom[b]->shape() == bottom[0]->shape()) << "Layer '"
        << layer_name << "': the " << kNames[b] << " bottom has shape "
        << bottom[b]->shape_string() << " but the anchor bottom has "
        << bottom[0]->shape_string()
        << "; the three bottoms must be (bs x N) blobs of one shape";
  }
}

/// Fails, naming the layer, the bottom and the element, when an input is
/// NaN or infinite.
template <typename Dtype>
void CheckTripletBottomsFinite(const std::string& layer_name,
    const vector<Blob<Dtype>*>& bottom) {
  static const char* kNames[3] = {"anchor", "positive", "negative"};
  const int dim = bottom[0]->count(1);
  for (int b = 0; b < 3; ++b) {
    const Dtype* data = bottom[b]->cpu_data();
    const int count = bottom[b]->count();
    for (int k = 0; k < count; ++k) {
      if (!std::isfinite(static_cast<double>(data[k]))) {
        LOG(FATAL) << "Layer '" << layer_name << "': the " << kNames[b]
            << " bottom holds " << data[k] << " at row " << k / dim
            << ", column " << k % dim << "; the net upstream diverged or the"
            << " data holds non-finite values (lower the learning rate or"
            << " check the input)";
      }
    }
  }
}

}  // namespace caffe

#endif  // CAFFE_TRIPLET_INPUT_CHECKS_HPP_
