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
    assert len(files) == 5 * sum(len(c["bits"]) for c in D.CONFIGS.values())
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
