"""prototxt/: the committed generated files are current, and every net and solver the
description yields parses as Caffe's NetParameter / SolverParameter."""
import re

import pytest
from google.protobuf import text_format

from prototxt import description as D
from prototxt import generate as G


@pytest.fixture(scope="module")
def caffe_pb2():
    from caffe.proto import caffe_pb2
    return caffe_pb2


def test_generated_files_are_current(capsys):
    assert G.main(["--check"]) == 0, capsys.readouterr().err


def test_every_generated_file_parses(caffe_pb2):
    files = G.default_files()
    # per configuration and width: TQN's extract + 2 x (net, solver); DSH, DNNH, DQN: net,
    # solver, extract each
    assert len(files) == 14 * sum(len(c["bits"]) for c in D.CONFIGS.values())
    for rel, text in files.items():
        message = caffe_pb2.SolverParameter() if "solver" in rel else caffe_pb2.NetParameter()
        text_format.Parse(text, message)


def layers_by_name(caffe_pb2, text):
    net = caffe_pb2.NetParameter()
    text_format.Parse(text, net)
    return {l.name: l for l in net.layer}


@pytest.mark.parametrize("step", [1, 2])
def test_train_net_structure(caffe_pb2, step):
    layers = layers_by_name(caffe_pb2, G.train_net("cifar10", "paper", 48, step, "img", "trip.txt"))
    assert layers["data"].type == "TripletData"
    assert layers["data"].triplet_data_param.batch_size == 32          # PAPER
    assert layers["data"].transform_param.crop_size == 227             # PAPER (AlexNet)
    assert layers["hash_fc"].inner_product_param.num_output == 48
    assert layers["hash"].type == "Sigmoid"
    assert list(layers["split"].slice_param.slice_point) == [32, 64]
    tqn = layers["tqn_loss"].triplet_quantization_loss_param
    assert (tqn.alpha_d, tqn.beta, tqn.gamma) == pytest.approx((7.62, 8, 1))   # Table I, PAPER
    assert (tqn.alpha_s, tqn.delta) == pytest.approx((0.16, 0.64))
    assert layers["triplet_loss"].triplet_loss_param.margin == pytest.approx(1.6)
    trained, monitored = ("triplet_loss", "tqn_loss") if step == 1 else ("tqn_loss", "triplet_loss")
    assert layers[trained].loss_weight[0] == 1 and layers[monitored].loss_weight[0] == 0
    assert list(layers["tqn_loss"].loss_weight)[1:] == [0, 0]


def test_python_implementation_uses_the_same_parameters(caffe_pb2):
    layers = layers_by_name(caffe_pb2, G.train_net("digits", "cpu", 24, 2, "img", "t.txt",
                                                   implementation="python"))
    py = layers["tqn_loss"]
    assert py.type == "Python" and py.python_param.layer == "TripletQuantizationLossLayer"
    param = caffe_pb2.TripletQuantizationLossParameter()
    text_format.Parse(py.python_param.param_str, param)
    assert param.alpha_d == pytest.approx(5.46) and param.beta == 8
    assert list(py.loss_weight) == [1, 0, 0]


def test_solvers_follow_the_paper(caffe_pb2):
    files = G.default_files()
    s1, s2 = caffe_pb2.SolverParameter(), caffe_pb2.SolverParameter()
    text_format.Parse(files["cifar10_paper/12bits/step1_solver.prototxt"], s1)
    text_format.Parse(files["cifar10_paper/12bits/step2_solver.prototxt"], s2)
    assert (s1.base_lr, s2.base_lr) == pytest.approx((0.001, 0.0001))
    assert s1.momentum == pytest.approx(0.9) and s1.weight_decay == pytest.approx(0.0005)
    assert s1.max_iter == 40 * (50000 // 32 + 1)                       # 40 epochs
    assert s2.weights == [f"runs/cifar10_paper_12bits/step1_iter_{s1.max_iter}.caffemodel"]


def test_unknown_configuration_is_named():
    with pytest.raises(KeyError, match="no configuration for data set 'mnist'"):
        G.train_net("mnist", "cpu", 12, 1, "a", "b")


def test_dsh_net(caffe_pb2):
    layers = layers_by_name(caffe_pb2, G.train_net("cifar10", "cpu", 24, 1, "img", "shuffled.txt",
                                                   mean_file="m", method="dsh"))
    assert list(layers["data"].top) == ["data", "label"]
    assert layers["data"].triplet_data_param.triplet_source == "shuffled.txt"
    assert layers["hash_fc"].type == "InnerProduct" and list(layers["hash_fc"].top) == ["hash"]
    loss = layers["dsh_loss"]
    assert loss.type == "DSHLoss" and list(loss.bottom) == ["hash", "label"]
    assert loss.dsh_loss_param.margin == 48 and loss.dsh_loss_param.alpha == pytest.approx(0.01)


def test_dnnh_net_divides_and_encodes(caffe_pb2):
    layers = layers_by_name(caffe_pb2, G.train_net("digits", "cpu", 12, 1, "img", "t.txt",
                                                   method="dnnh"))
    width = D.METHODS["dnnh"]["slice_width"]
    assert layers["dnnh_fc"].inner_product_param.num_output == width * 12
    conv = layers["hash_fc"].convolution_param
    assert layers["hash_fc"].type == "Convolution"
    assert (conv.num_output, conv.group, conv.kernel_size[0]) == (12, 12, 1)   # a unit per slice
    assert layers["hash"].type == "PiecewiseThreshold"
    loss = layers["dnnh_loss"]
    assert loss.type == "TripletLoss" and loss.triplet_loss_param.margin == 1
    assert list(loss.loss_weight) == [2]
    assert list(layers["data"].top) == ["data"]


@pytest.mark.parametrize("bits,m,k", [(12, 2, 64), (24, 3, 256), (48, 6, 256)])
def test_dqn_net(caffe_pb2, bits, m, k):
    layers = layers_by_name(caffe_pb2, G.train_net("digits", "cpu", bits, 1, "img", "s.txt",
                                                   method="dqn", train_rows=1438))
    assert layers["hash"].type == "TanH" and layers["hash_fc"].inner_product_param.num_output == 300
    assert layers["cosine_loss"].pairwise_cosine_loss_param.dissimilar_value == -1
    pq = layers["pq_loss"]
    p = pq.product_quantization_loss_param
    assert (p.num_subspaces, p.num_centroids) == (m, k)
    assert p.codebook_update_interval == 2 * -(-1438 // 96)            # every 2 epochs
    short = layers_by_name(caffe_pb2, G.train_net("digits", "cpu", bits, 1, "img", "s.txt", method="dqn",
                                                  train_rows=1438, total_iters=60))
    assert short["pq_loss"].product_quantization_loss_param.codebook_update_interval == 15  # 4 a run
    assert [(s.lr_mult, s.decay_mult) for s in pq.param] == [(0, 0), (0, 0)]
    assert list(pq.loss_weight) == [pytest.approx(1e-4)]


def test_pq_shape():
    assert [D.pq_shape(b) for b in (12, 24, 48, 96, 32)] == [(2, 64), (3, 256), (6, 256), (12, 256),
                                                              (4, 256)]
    assert D.dqn_bottleneck(192) == 312                                 # rounded up to M = 24
    with pytest.raises(ValueError, match="divisible by 8"):
        D.pq_shape(10)


def test_one_step_methods_get_tqns_budget(caffe_pb2):
    files = G.default_files()
    tqn = [caffe_pb2.SolverParameter() for _ in range(2)]
    text_format.Parse(files["digits_cpu/24bits/step1_solver.prototxt"], tqn[0])
    text_format.Parse(files["digits_cpu/24bits/step2_solver.prototxt"], tqn[1])
    for method in ("dsh", "dnnh", "dqn"):
        s = caffe_pb2.SolverParameter()
        text_format.Parse(files[f"digits_cpu/24bits/{method}_solver.prototxt"], s)
        assert s.max_iter == tqn[0].max_iter + tqn[1].max_iter
        assert s.base_lr == pytest.approx(tqn[0].base_lr)


def test_unknown_method_is_named():
    with pytest.raises(KeyError, match="unknown method 'hashnet'"):
        G.train_net("digits", "cpu", 12, 1, "a", "b", method="hashnet")


def test_dnnh_gradient_override(caffe_pb2):
    default = layers_by_name(caffe_pb2, G.train_net("digits", "cpu", 12, 1, "img", "t.txt", method="dnnh"))
    assert default["hash"].piecewise_threshold_param.gradient == \
        caffe_pb2.PiecewiseThresholdParameter.EXACT
    straight = layers_by_name(caffe_pb2, G.train_net("digits", "cpu", 12, 1, "img", "t.txt", method="dnnh",
                                                     method_overrides={"gradient": "STRAIGHT_THROUGH"}))
    assert straight["hash"].piecewise_threshold_param.gradient == \
        caffe_pb2.PiecewiseThresholdParameter.STRAIGHT_THROUGH
    assert straight["hash"].piecewise_threshold_param.epsilon == pytest.approx(0.1)
    assert D.METHODS["dnnh"]["gradient"] == "EXACT"              # the table itself is unchanged


@pytest.mark.parametrize("method,overrides,message", [
    ("dnnh", {"epsilon": "0.2"}, "method dnnh has no training parameter 'epsilon' to override; "
                                 "allowed: gradient"),
    ("dnnh", {"gradient": "SIGN"}, "gradient must be one of EXACT, STRAIGHT_THROUGH, got 'SIGN'"),
    ("dsh", {"gradient": "EXACT"}, "method dsh has no training parameter 'gradient' to override; "
                                   "allowed: none"),
])
def test_bad_method_override_is_named(method, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        D.method_parameters(method, overrides)
