// Runs the triplet loss layers in double precision on cases written by another
// program and writes what they compute, so that tests/test_layer_agreement.py
// can compare the C++ layers with the Python ones in float64.
//
//   TQN_LAYER_CASES=cases.txt TQN_LAYER_RESULTS=out.txt \
//     test.testbin --gtest_filter='TripletLayersExternalCases.*'
//
// Each case in cases.txt is seven lines:
//   layer <LayerParameter in protobuf text, on one line>
//   tops <number of tops>
//   shape <bs> <N>
//   a <bs*N values>   p <bs*N values>   n <bs*N values>   (one line each)
//   topdiff <one value per top: the loss weights / top diffs for Backward>
// and out.txt gets, per case: "tops", "da", "dp", "dn" lines with %.17g values.
// Without TQN_LAYER_CASES the test only says so: it is a harness, not a check.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/layer.hpp"
#include "caffe/layer_factory.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

namespace {

std::vector<double> ReadValues(std::istream* in, const std::string& tag) {
  std::string line, got;
  CHECK(std::getline(*in, line)) << "cases file ended before '" << tag << "'";
  std::istringstream fields(line);
  fields >> got;
  CHECK_EQ(got, tag) << "cases file: expected a '" << tag << "' line";
  std::vector<double> values;
  double v;
  while (fields >> v) { values.push_back(v); }
  return values;
}

void WriteValues(FILE* out, const char* tag, const double* v, int count) {
  fprintf(out, "%s", tag);
  for (int k = 0; k < count; ++k) { fprintf(out, " %.17g", v[k]); }
  fprintf(out, "\n");
}

}  // namespace

TEST(TripletLayersExternalCases, RunCasesFromEnvironment) {
  const char* cases_path = getenv("TQN_LAYER_CASES");
  const char* results_path = getenv("TQN_LAYER_RESULTS");
  if (!cases_path || !results_path) {
    LOG(INFO) << "TQN_LAYER_CASES / TQN_LAYER_RESULTS not set: nothing to run"
        << " (tests/test_layer_agreement.py sets them)";
    return;
  }
  Caffe::set_mode(Caffe::CPU);
  std::ifstream in(cases_path);
  ASSERT_TRUE(in.good()) << "cannot read " << cases_path;
  FILE* out = fopen(results_path, "w");
  ASSERT_TRUE(out != NULL) << "cannot write " << results_path;
  std::string line;
  int cases = 0;
  while (std::getline(in, line)) {
    if (line.empty()) { continue; }
    ASSERT_EQ(line.compare(0, 6, "layer "), 0) << "expected a 'layer' line";
    LayerParameter param;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
        line.substr(6), &param)) << "bad LayerParameter: " << line;
    const int num_tops = static_cast<int>(ReadValues(&in, "tops")[0]);
    const std::vector<double> shape = ReadValues(&in, "shape");
    const char* names[3] = {"a", "p", "n"};
    std::vector<Blob<double>*> bottom, top;
    for (int b = 0; b < 3; ++b) {
      const std::vector<double> v = ReadValues(&in, names[b]);
      Blob<double>* blob = new Blob<double>(static_cast<int>(shape[0]),
          static_cast<int>(shape[1]), 1, 1);
      ASSERT_EQ(v.size(), blob->count());
      std::copy(v.begin(), v.end(), blob->mutable_cpu_data());
      bottom.push_back(blob);
    }
    for (int t = 0; t < num_tops; ++t) { top.push_back(new Blob<double>()); }
    const std::vector<double> top_diff = ReadValues(&in, "topdiff");
    ASSERT_EQ(top_diff.size(), num_tops);
    shared_ptr<Layer<double> > layer = LayerRegistry<double>::CreateLayer(param);
    layer->SetUp(bottom, top);
    layer->Forward(bottom, top);
    std::vector<double> top_values;
    for (int t = 0; t < num_tops; ++t) {
      top_values.push_back(top[t]->cpu_data()[0]);
      top[t]->mutable_cpu_diff()[0] = top_diff[t];
    }
    layer->Backward(top, std::vector<bool>(3, true), bottom);
    WriteValues(out, "tops", top_values.data(), num_tops);
    const char* diff_names[3] = {"da", "dp", "dn"};
    for (int b = 0; b < 3; ++b) {
      WriteValues(out, diff_names[b], bottom[b]->cpu_diff(), bottom[b]->count());
      delete bottom[b];
    }
    for (int t = 0; t < num_tops; ++t) { delete top[t]; }
    ++cases;
  }
  fclose(out);
  LOG(INFO) << "ran " << cases << " cases from " << cases_path;
}

}  // namespace caffe
