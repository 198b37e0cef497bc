#ifndef CAFFE_PRODUCT_QUANTIZATION_LOSS_LAYER_HPP_
#define CAFFE_PRODUCT_QUANTIZATION_LOSS_LAYER_HPP_

#include <stdint.h>

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The product quantization loss of DQN (Cao et al., "Deep
 *        Quantization Network for Efficient Image Retrieval", AAAI 2016):
 *
 * @f[
 *   L = \frac{1}{N} \sum_{i=1}^{N} \sum_{m=1}^{M}
 *       \left\| z_{im} - C_m[h_{im}] \right\|_2^2, \qquad
 *   h_{im} = \arg\min_k \left\| z_{im} - C_m[k] \right\|_2^2
 * @f]
 *
 * where row @f$ z_i @f$ (@f$ D @f$ values) is cut into @f$ M @f$ sub-vectors
 * @f$ z_{im} @f$ of @f$ D/M @f$ values and @f$ C_m @f$ is subspace
 * @f$ m @f$'s codebook of @f$ K @f$ centroids. A tie in the argmin goes to
 * the smallest @f$ k @f$. On the CPU every squared distance (in the loss's
 * assignment and in k-means) is summed in double precision in coordinate
 * order, each square rounded before it is added (never a fused multiply-add:
 * contraction is switched off for GCC and clang), so the assignments do not
 * depend on the processor's vector width: the loop over the K centroids is
 * the one vectorized (AVX-512 / AVX2 clones picked at run time on x86-64 with
 * GCC). The GPU kernel's assignment is nvcc's arithmetic (see below).
 *
 * @param bottom input Blob vector (length 1)
 *   -# @f$ (N \times \ldots) @f$ the features @f$ z @f$; the trailing axes
 *      of each row are flattened to @f$ D @f$ values
 * @param top output Blob vector (length 1)
 *   -# @f$ (1) @f$ the loss @f$ L @f$ (0 until the first codebook update)
 *
 * Backward, with @f$ w @f$ the top diff (the loss_weight, DQN's
 * @f$ \lambda @f$), holds the codebooks and the assignments fixed (DQN's
 * alternating optimization):
 * @f$ \partial L / \partial z_i = \frac{2w}{N} (z_i - C h_i) @f$, where
 * @f$ C h_i @f$ is the concatenation of the chosen centroids. It is 0 until the
 * first codebook update. When param_propagate_down(0) it also adds
 * @f$ \partial L / \partial C_m[k] = -\frac{2w}{N} \sum_{i: h_{im} = k}
 * (z_{im} - C_m[k]) @f$ to the codebooks' diff (for the gradient checker);
 * a Net asks for it only under force_backward, since lr_mult is 0, and the
 * solver ignores it (as for any frozen layer's blobs).
 *
 * Blobs (saved with the weights; both need `param { lr_mult: 0
 * decay_mult: 0 }`, checked at setup, so the solver never changes them):
 *   -# @f$ (M \times K \times D/M) @f$ the codebooks, 0 at setup
 *   -# @f$ (2) @f$ the state: forward passes counted in the TRAIN phase, and
 *      codebook updates done (exact integers in float up to 2^24 passes).
 *      A run resumed from a snapshot continues the update schedule.
 *
 * TRAIN phase: each Forward appends the batch's rows to a ring buffer of the
 * most recent buffer_size rows (host memory, not saved: a resumed run refills
 * it), counts the pass, and when the count is a multiple of
 * codebook_update_interval updates the codebooks BEFORE computing the loss:
 * per subspace, kmeans_iterations Lloyd iterations (assign each buffer row to
 * its nearest centroid, then move each centroid to the mean of its rows; in
 * double precision) on the buffer's sub-vectors, stopping early once the
 * assignments repeat. The buffer needs >= K rows at an update.
 *
 * Initialization of an update: from the current codebooks, except at the
 * first update (state[1] == 0), which starts from buffer rows chosen by a
 * splitmix64 generator (reproduced by tqn_layers.dqn in numpy):
 *   - next() adds 0x9E3779B97F4A7C15 to the 64-bit state (initially `seed`)
 *     and returns the state mixed by
 *     z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
 *     z *= 0x94D049BB133111EB; z ^= z >> 31;
 *   - for m = 0 .. M-1 in turn, a permutation p of the n buffer rows (numbered
 *     oldest first) is drawn by Fisher-Yates: p = (0, .., n-1), then for
 *     j = n-1 down to 1 swap p[j] and p[next() % (j + 1)];
 *   - centroid k of subspace m starts at sub-vector m of row
 *     p[floor(k n / K)] (K distinct rows).
 * An empty cluster keeps its centroid; during the first update (whose
 * starting centroids are arbitrary rows) it instead takes the row farthest
 * from its assigned centroid (largest distance, ties: the oldest row; for
 * several empty clusters, in order of k, each takes a different row).
 *
 * TEST phase: no buffer, no update, no counting: the loss of the current
 * codebooks (0 if none were learned yet).
 *
 * GPU: assignment, loss and gradient run as kernels; the ring buffer and
 * k-means stay on the CPU (they read bottom[0]->cpu_data(), a device-to-host
 * copy per TRAIN pass).
 *
 * A non-finite input is a fatal error that names the row and the column.
 */
template <typename Dtype>
class ProductQuantizationLossLayer : public LossLayer<Dtype> {
 public:
  explicit ProductQuantizationLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param), dim_(0), num_subspaces_(0),
        num_centroids_(0), interval_(0), buffer_size_(0), iterations_(0),
        seed_(0), buffer_rows_(0), buffer_next_(0), have_codebooks_(false) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "ProductQuantizationLoss"; }
  virtual inline int ExactNumBottomBlobs() const { return 1; }
  virtual inline int ExactNumTopBlobs() const { return 1; }
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return true;
  }

  /// Rows currently held by the k-means buffer (for tests).
  int buffer_rows() const { return buffer_rows_; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// TRAIN phase bookkeeping shared by both devices: checks the rows, buffers
  /// them, counts the pass and runs the k-means update when due. Sets
  /// have_codebooks_.
  void TrainStep(const Blob<Dtype>& bottom);
  /// Reads the state blob (checked: finite non-negative integers).
  void ReadState(int64_t* passes, int64_t* updates) const;
  void UpdateCodebooks();
  /// Fails naming the row and column of the first non-finite value.
  void CheckFinite(const Blob<Dtype>& bottom) const;

  int dim_, num_subspaces_, num_centroids_, interval_, buffer_size_;
  int iterations_;
  uint64_t seed_;
  /// The ring buffer: buffer_size_ x dim_ values; row buffer_next_ is the
  /// next written (the oldest once full), buffer_rows_ are valid.
  vector<Dtype> buffer_;
  int buffer_rows_, buffer_next_;
  /// Whether the last Forward had codebooks (else loss and gradient are 0).
  bool have_codebooks_;
  /// Per row and subspace: the chosen centroid's index, and its squared
  /// distance (GPU scratch).
  Blob<Dtype> codes_;
  Blob<Dtype> dist_;
};

}  // namespace caffe

#endif  // CAFFE_PRODUCT_QUANTIZATION_LOSS_LAYER_HPP_
