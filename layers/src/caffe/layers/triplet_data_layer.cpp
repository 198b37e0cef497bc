#ifdef USE_LMDB
#include <lmdb.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "caffe/layers/triplet_data_layer.hpp"
#include "caffe/util/benchmark.hpp"

namespace caffe {

namespace {

void CheckMdb(int rc, const std::string& what) {
  CHECK_EQ(rc, MDB_SUCCESS) << what << ": " << mdb_strerror(rc);
}

}  // namespace

template <typename Dtype>
TripletDataLayer<Dtype>::TripletDataLayer(const LayerParameter& param)
    : BasePrefetchingDataLayer<Dtype>(param), env_(NULL), dbi_(0),
      num_records_(0), position_(0) {}

template <typename Dtype>
TripletDataLayer<Dtype>::~TripletDataLayer() {
  this->StopInternalThread();
  if (env_) {
    mdb_dbi_close(env_, dbi_);
    mdb_env_close(env_);
  }
}

template <typename Dtype>
void TripletDataLayer<Dtype>::DataLayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const TripletDataParameter& param = this->layer_param_.triplet_data_param();
  const std::string& name = this->layer_param_.name();
  CHECK(param.has_source()) << "Layer '" << name
      << "': triplet_data_param.source (the image LMDB) is required";
  CHECK(param.has_triplet_source()) << "Layer '" << name
      << "': triplet_data_param.triplet_source (the triplet list) is required";
  CHECK_GT(param.batch_size(), 0) << "Layer '" << name
      << "': triplet_data_param.batch_size must be > 0";
  const std::string& source = param.source();
  CheckMdb(mdb_env_create(&env_), "mdb_env_create");
  CheckMdb(mdb_env_set_mapsize(env_, size_t(1) << 40), "mdb_env_set_mapsize");
  const int rc = mdb_env_open(env_, source.c_str(),
      MDB_RDONLY | MDB_NOTLS | MDB_NOLOCK, 0664);
  CHECK_EQ(rc, MDB_SUCCESS) << "Layer '" << name << "': cannot open the image"
      << " LMDB " << source << " (" << mdb_strerror(rc) << "); build it with"
      << " python -m data_prep.build";
  MDB_txn* txn;
  CheckMdb(mdb_txn_begin(env_, NULL, MDB_RDONLY, &txn), source);
  CheckMdb(mdb_dbi_open(txn, NULL, 0, &dbi_), source);
  MDB_stat stat;
  CheckMdb(mdb_stat(txn, dbi_, &stat), source);
  num_records_ = stat.ms_entries;
  CHECK_GT(num_records_, 0) << "Layer '" << name << "': " << source
      << " holds no records";
  Datum datum;
  ReadDatum(txn, 0, &datum);
  mdb_txn_abort(txn);
  LoadTriplets(param.triplet_source());
  position_ = param.first_triplet() % num_triplets();
  LOG_IF(WARNING, param.first_triplet() >= num_triplets() &&
      Caffe::root_solver()) << "TripletData: first_triplet "
      << param.first_triplet() << " is past the " << num_triplets()
      << " triplets of " << param.triplet_source() << "; starting at "
      << position_ << " (the list is reused)";

  const int rows = 3 * param.batch_size();
  vector<int> top_shape = this->data_transformer_->InferBlobShape(datum);
  this->transformed_data_.Reshape(top_shape);
  top_shape[0] = rows;
  top[0]->Reshape(top_shape);
  for (int i = 0; i < this->prefetch_.size(); ++i) {
    this->prefetch_[i]->data_.Reshape(top_shape);
  }
  if (this->output_labels_) {
    vector<int> label_shape(1, rows);
    top[1]->Reshape(label_shape);
    for (int i = 0; i < this->prefetch_.size(); ++i) {
      this->prefetch_[i]->label_.Reshape(label_shape);
    }
  }
  LOG_IF(INFO, Caffe::root_solver()) << "TripletData: " << num_records_
      << " images in " << source << ", " << num_triplets()
      << " triplets in " << param.triplet_source() << ", batches of "
      << param.batch_size() << " triplets from triplet " << position_
      << " -> " << top[0]->shape_string();
}

template <typename Dtype>
void TripletDataLayer<Dtype>::LoadTriplets(const std::string& path) {
  const std::string& name = this->layer_param_.name();
  std::ifstream in(path.c_str());
  CHECK(in.good()) << "Layer '" << name << "': cannot read the triplet list "
      << path << "; build it with python -m data_prep.build";
  std::string line;
  size_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.empty()) { continue; }
    std::istringstream fields(line);
    long long a, p, n;  // NOLINT(runtime/int)
    std::string rest;
    CHECK((fields >> a >> p >> n) && !(fields >> rest)) << "Layer '" << name
        << "': " << path << " line " << line_number << " is '" << line
        << "', not three row indices 'anchor positive negative'";
    const long long index[3] = {a, p, n};  // NOLINT(runtime/int)
    for (int k = 0; k < 3; ++k) {
      CHECK(index[k] >= 0 && index[k] < static_cast<long long>(num_records_))  // NOLINT
          << "Layer '" << name << "': " << path << " line " << line_number
          << " names row " << index[k] << ", but the image LMDB "
          << this->layer_param_.triplet_data_param().source() << " has rows 0.."
          << num_records_ - 1 << "; the list and the LMDB do not belong"
          << " together (rebuild both with python -m data_prep.build)";
      triplets_.push_back(static_cast<int>(index[k]));
    }
  }
  CHECK_GT(triplets_.size(), 0) << "Layer '" << name << "': " << path
      << " lists no triplets";
}

template <typename Dtype>
void TripletDataLayer<Dtype>::ReadDatum(void* txn, int index, Datum* datum) {
  char key[32];
  snprintf(key, sizeof(key), "%08d", index);
  MDB_val mdb_key, mdb_value;
  mdb_key.mv_size = strlen(key);
  mdb_key.mv_data = key;
  const int rc = mdb_get(static_cast<MDB_txn*>(txn), dbi_, &mdb_key,
      &mdb_value);
  CHECK_EQ(rc, MDB_SUCCESS) << "Layer '" << this->layer_param_.name()
      << "': record " << key << " of "
      << this->layer_param_.triplet_data_param().source() << ": "
      << mdb_strerror(rc) << " (records must be keyed by their row index, as"
      << " data_prep writes them)";
  CHECK(datum->ParseFromArray(mdb_value.mv_data,
      static_cast<int>(mdb_value.mv_size))) << "Layer '"
      << this->layer_param_.name() << "': record " << key << " of "
      << this->layer_param_.triplet_data_param().source()
      << " is not a Caffe Datum";
}

// This function is called on the prefetch thread.
template <typename Dtype>
void TripletDataLayer<Dtype>::load_batch(Batch<Dtype>* batch) {
  CPUTimer batch_timer;
  batch_timer.Start();
  const int bs = this->layer_param_.triplet_data_param().batch_size();
  MDB_txn* txn;
  CheckMdb(mdb_txn_begin(env_, NULL, MDB_RDONLY, &txn), "mdb_txn_begin");
  Dtype* top_data = batch->data_.mutable_cpu_data();
  Dtype* top_label = this->output_labels_ ?
      batch->label_.mutable_cpu_data() : NULL;
  Datum datum;
  for (int k = 0; k < bs; ++k) {
    if (position_ == num_triplets()) {
      LOG_IF(INFO, Caffe::root_solver()) << "TripletData: the triplet list "
          << "is used up; restarting from its first triplet";
      position_ = 0;
    }
    for (int role = 0; role < 3; ++role) {  // anchor, positive, negative
      const int row = role * bs + k;
      ReadDatum(txn, triplets_[3 * position_ + role], &datum);
      this->transformed_data_.set_cpu_data(
          top_data + batch->data_.offset(row));
      this->data_transformer_->Transform(datum, &(this->transformed_data_));
      if (top_label) { top_label[row] = datum.label(); }
    }
    ++position_;
  }
  mdb_txn_abort(txn);
  batch_timer.Stop();
  DLOG(INFO) << "Prefetch triplet batch: " << batch_timer.MilliSeconds()
      << " ms.";
}

INSTANTIATE_CLASS(TripletDataLayer);
REGISTER_LAYER_CLASS(TripletData);

}  // namespace caffe
#endif  // USE_LMDB
