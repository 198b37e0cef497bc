"""Caffe nets and solvers from `prototxt.description`.

    python -m prototxt.generate            # (re)writes prototxt/generated/ for the default paths
    python -m prototxt.generate --check    # fails when prototxt/generated/ is out of date

Library use (the training and extraction tools): `train_net`, `solver`, `extract_net` return
prototxt text for given data paths.

Train nets: TripletData (3*bs rows: anchors, positives, negatives) -> backbone -> "hash_fc"
(InnerProduct, N) -> "hash" (Sigmoid) -> Slice into hash_a / hash_p / hash_n -> the step's loss
(weight 1) and the other step's loss as a monitor (weight 0, logged for the paper's Fig. 1-2).
"""
import argparse
import os
import sys

from data_prep.outputs import write_text
from prototxt import description as D

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATED = os.path.join(ROOT, "prototxt", "generated")


class Enum(str):
    """A protobuf enum value: written bare, not quoted."""


def _value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _fields(d, indent):
    pad = "  " * indent
    out = []
    for key, v in d.items():
        for item in (v if isinstance(v, list) else [v]):
            if isinstance(item, dict):
                out.append(f"{pad}{key} {{")
                out.extend(_fields(item, indent + 1))
                out.append(f"{pad}}}")
            else:
                out.append(f"{pad}{key}: {_value(item)}")
    return out


def layer(name, type_, bottom=(), top=(), **fields):
    d = {"name": name, "type": type_}
    if bottom:
        d["bottom"] = list(bottom)
    if top:
        d["top"] = list(top)
    d.update(fields)
    return "\n".join(["layer {"] + _fields(d, 1) + ["}"])


def _filler(kind, **kw):
    return dict(type=kind, **kw)


def _conv(name, bottom, num, kernel, stride=1, pad=0, group=1, std=None):
    param = dict(num_output=num, kernel_size=kernel)
    if pad:
        param["pad"] = pad
    if stride != 1:
        param["stride"] = stride
    if group != 1:
        param["group"] = group
    param["weight_filler"] = _filler("gaussian", std=std) if std else _filler("xavier")
    param["bias_filler"] = _filler("constant", value=0.0)
    return layer(name, "Convolution", [bottom], [name], param=[dict(lr_mult=1.0), dict(lr_mult=2.0)],
                 convolution_param=param)


def _fc(name, bottom, num, std=None):
    return layer(name, "InnerProduct", [bottom], [name], param=[dict(lr_mult=1.0), dict(lr_mult=2.0)],
                 inner_product_param=dict(
                     num_output=num,
                     weight_filler=_filler("gaussian", std=std) if std else _filler("xavier"),
                     bias_filler=_filler("constant", value=0.0)))


def _relu(name, blob):
    return layer(name, "ReLU", [blob], [blob])


def _pool(name, bottom, kind, kernel, stride):
    return layer(name, "Pooling", [bottom], [name],
                 pooling_param=dict(pool=Enum(kind), kernel_size=kernel, stride=stride))


def backbone(name, bottom="data"):
    """The layers from the image blob to "features"."""
    if name == "digits_mlp":
        return [_fc("ip1", bottom, 128), _relu("relu1", "ip1"),
                _fc("ip2", "ip1", 128), _relu("relu2", "ip2"),
                layer("features", "Flatten", ["ip2"], ["features"])]
    if name == "cifar_quick":
        return [_conv("conv1", bottom, 32, 5, pad=2, std=0.0001), _pool("pool1", "conv1", "MAX", 3, 2),
                _relu("relu1", "pool1"),
                _conv("conv2", "pool1", 32, 5, pad=2, std=0.01), _relu("relu2", "conv2"),
                _pool("pool2", "conv2", "AVE", 3, 2),
                _conv("conv3", "pool2", 64, 5, pad=2, std=0.01), _relu("relu3", "conv3"),
                _pool("pool3", "conv3", "AVE", 3, 2),
                _fc("ip1", "pool3", 64, std=0.1),
                layer("features", "Flatten", ["ip1"], ["features"])]
    if name == "feature_head":
        width = D.BACKBONES[name]["width"]
        drop = dict(dropout_ratio=0.5)
        return [_fc("fc6", bottom, width), _relu("relu6", "fc6"),
                layer("drop6", "Dropout", ["fc6"], ["fc6"], dropout_param=drop),
                _fc("fc7", "fc6", width), _relu("relu7", "fc7"),
                layer("drop7", "Dropout", ["fc7"], ["fc7"], dropout_param=drop),
                layer("features", "Flatten", ["fc7"], ["features"])]
    if name == "alexnet":
        lrn = dict(local_size=5, alpha=0.0001, beta=0.75)
        return [_conv("conv1", bottom, 96, 11, stride=4, std=0.01), _relu("relu1", "conv1"),
                layer("norm1", "LRN", ["conv1"], ["norm1"], lrn_param=lrn),
                _pool("pool1", "norm1", "MAX", 3, 2),
                _conv("conv2", "pool1", 256, 5, pad=2, group=2, std=0.01), _relu("relu2", "conv2"),
                layer("norm2", "LRN", ["conv2"], ["norm2"], lrn_param=lrn),
                _pool("pool2", "norm2", "MAX", 3, 2),
                _conv("conv3", "pool2", 384, 3, pad=1, std=0.01), _relu("relu3", "conv3"),
                _conv("conv4", "conv3", 384, 3, pad=1, group=2, std=0.01), _relu("relu4", "conv4"),
                _conv("conv5", "conv4", 256, 3, pad=1, group=2, std=0.01), _relu("relu5", "conv5"),
                _pool("pool5", "conv5", "MAX", 3, 2),
                _fc("fc6", "pool5", 4096, std=0.005), _relu("relu6", "fc6"),
                layer("drop6", "Dropout", ["fc6"], ["fc6"], dropout_param=dict(dropout_ratio=0.5)),
                _fc("fc7", "fc6", 4096, std=0.005), _relu("relu7", "fc7"),
                layer("drop7", "Dropout", ["fc7"], ["fc7"], dropout_param=dict(dropout_ratio=0.5)),
                layer("features", "Flatten", ["fc7"], ["features"])]
    raise KeyError(f"unknown backbone {name!r}")


def backbone_parameter_layers(name):
    """Names of the backbone's layers with weights (what a --weights file must provide: for
    AlexNet conv1 ... fc7), in net order."""
    import re
    names = []
    for text in backbone(name):
        m = re.search(r'name: "([^"]+)"\s+type: "(Convolution|InnerProduct)"', text)
        if m:
            names.append(m.group(1))
    return names


def hash_layers(bits, method="tqn", method_overrides=None):
    """The method's layers from "features" to "hash", the blob its loss sees and codes come from:
    tqn: fc + sigmoid (PAPER); dsh: a linear fc (codes = sign); dnnh: fc + ReLU to slice_width x
    bits values, divide-and-encode (one 1x1 convolution group per bit = one unit per slice) +
    sigmoid + piece-wise threshold; dqn: the fc bottleneck + tanh. `method_overrides`: see
    D.TRAINING_OVERRIDES."""
    m = D.method_parameters(method, method_overrides)
    if method == "tqn":
        return [_fc("hash_fc", "features", bits), layer("hash", "Sigmoid", ["hash_fc"], ["hash"])]
    if method == "dsh":
        return [layer("hash_fc", "InnerProduct", ["features"], ["hash"],
                      param=[dict(lr_mult=1.0), dict(lr_mult=2.0)],
                      inner_product_param=dict(num_output=bits, weight_filler=_filler("xavier"),
                                               bias_filler=_filler("constant", value=0.0)))]
    if method == "dnnh":
        return [_fc("dnnh_fc", "features", m["slice_width"] * bits), _relu("dnnh_relu", "dnnh_fc"),
                layer("dnnh_slices", "Reshape", ["dnnh_fc"], ["dnnh_slices"],
                      reshape_param=dict(shape=dict(dim=[0, -1, 1, 1]))),
                _conv("hash_fc", "dnnh_slices", bits, 1, group=bits),
                layer("hash_sigmoid", "Sigmoid", ["hash_fc"], ["hash_sigmoid"]),
                layer("hash", "PiecewiseThreshold", ["hash_sigmoid"], ["hash"],
                      piecewise_threshold_param=dict(epsilon=m["epsilon"],
                                                     gradient=Enum(m["gradient"])))]
    if method == "dqn":
        return [_fc("hash_fc", "features", D.dqn_bottleneck(bits)),
                layer("hash", "TanH", ["hash_fc"], ["hash"])]
    raise KeyError(f"no hash layers for method {method!r}")


def pq_layer(bits, iters_per_epoch, train_rows, weight, total_iters=None):
    """DQN's ProductQuantizationLoss on "hash" (codebooks: blobs updated by k-means, never by
    the solver), updated every 2 epochs (DQN), or 4 times a run when the run is shorter than
    8 epochs (OURS: a short CPU-scale budget would otherwise never quantize)."""
    m = D.METHODS["dqn"]
    subspaces, centroids = D.pq_shape(bits)
    interval = m["update_epochs"] * iters_per_epoch
    if total_iters:
        interval = min(interval, total_iters // 4)
    return layer("pq_loss", "ProductQuantizationLoss", ["hash"], ["pq_loss"],
                 param=[dict(lr_mult=0.0, decay_mult=0.0), dict(lr_mult=0.0, decay_mult=0.0)],
                 product_quantization_loss_param=dict(
                     num_subspaces=subspaces, num_centroids=centroids,
                     codebook_update_interval=max(1, interval),
                     buffer_size=max(centroids, min(m["buffer_rows"], train_rows)),
                     kmeans_iterations=m["kmeans_iterations"], seed=0),
                 loss_weight=weight)


def transform(backbone_name, train, mean_file=None):
    b = D.BACKBONES[backbone_name]
    t = {}
    if b.get("scale"):
        t["scale"] = float(b["scale"])
    if b.get("input_crop"):
        t["crop_size"] = b["input_crop"]
    if b.get("mirror") and train:
        t["mirror"] = True
    if b.get("mean_from_file"):
        if not mean_file:
            raise ValueError(f"backbone {backbone_name} needs the data set's mean file")
        t["mean_file"] = mean_file
    else:
        t["mean_value"] = [float(v) for v in b.get("mean_values", ())]
    return t


def _param_text(d):
    return " ".join(f"{k}: {_value(v)}" for k, v in d.items())


def loss_layer(kind, name, weight, param, implementation="cpp"):
    """A TripletLoss or TripletQuantizationLoss layer on hash_a/p/n: the C++ layer, or the
    pycaffe Python layer of tqn_layers with the same parameters (as param_str)."""
    tops = [name] if kind == "TripletLoss" else [name, name + "_s", name + "_d"]
    weights = [weight] + [0.0] * (len(tops) - 1)
    bottoms = ["hash_a", "hash_p", "hash_n"]
    if implementation == "python":
        return layer(name, "Python", bottoms, tops,
                     python_param=dict(module="tqn_layers", layer=kind + "Layer",
                                       param_str=_param_text(param)),
                     loss_weight=weights)
    field = "triplet_loss_param" if kind == "TripletLoss" else "triplet_quantization_loss_param"
    return layer(name, kind, bottoms, tops, **{field: param}, loss_weight=weights)


def train_net(dataset, scale, bits, step, images, triplets, mean_file=None, batch_triplets=None,
              tqn_overrides=None, implementation="cpp", method="tqn", train_rows=None,
              total_iters=None, method_overrides=None, first_triplet=0):
    """The training net of `method` and `step` (tqn: 1 triplet loss, 2 TQN; the others: 1)
    reading `images` (LMDB) and `triplets` (the list file: triplets.txt for the triplet methods,
    shuffled.txt for the pairwise ones). `tqn_overrides` replaces TQN parameters (e.g. beta) for
    studies; `implementation` "python" uses the pycaffe Python loss layers instead of the C++
    ones; `train_rows` (the train set's size) and `total_iters` (the run's iterations) set DQN's
    codebook schedule; `method_overrides` changes a method's training parameters
    (D.TRAINING_OVERRIDES); `first_triplet` is the line of the list the data layer starts at
    (step 2 continues where step 1 stopped; a resumed step where its snapshot was taken)."""
    cfg = D.config(dataset, scale)
    m = D.method_parameters(method, method_overrides)
    if step not in m["steps"]:
        raise ValueError(f"method {method} has steps {m['steps']}, not {step}")
    bs = batch_triplets or D.PAPER_TRAINING["batch_triplets"]
    pairwise = m["batches"] == "shuffled"
    data_param = dict(source=images, triplet_source=triplets, batch_size=bs)
    if first_triplet:
        data_param["first_triplet"] = int(first_triplet)
    data = layer("data", "TripletData", top=["data", "label"] if pairwise else ["data"],
                 transform_param=transform(cfg["backbone"], True, mean_file),
                 triplet_data_param=data_param)
    parts = [data, *backbone(cfg["backbone"]), *hash_layers(bits, method, method_overrides)]
    if method == "tqn":
        given = tqn_overrides or {}
        tqn = dict(given) if "alpha_d" in given and dataset == D.IMAGES else \
            dict(D.tqn_parameters(dataset, scale, bits), **given)
        params = {"TripletLoss": dict(margin=D.PAPER_TRAINING["margin"]), "TripletQuantizationLoss": tqn}
        names = {"TripletLoss": "triplet_loss", "TripletQuantizationLoss": "tqn_loss"}
        s = D.STEPS[step]
        parts += [layer("split", "Slice", ["hash"], ["hash_a", "hash_p", "hash_n"],
                        slice_param=dict(axis=0, slice_point=[bs, 2 * bs])),
                  loss_layer(s["loss"], names[s["loss"]], 1.0, params[s["loss"]], implementation),
                  loss_layer(s["monitor"], names[s["monitor"]], 0.0, params[s["monitor"]],
                             implementation)]
        what = f"step {step}: {s['loss']} (the {s['monitor']} is logged with weight 0)"
    elif method == "dnnh":
        parts += [layer("split", "Slice", ["hash"], ["hash_a", "hash_p", "hash_n"],
                        slice_param=dict(axis=0, slice_point=[bs, 2 * bs])),
                  loss_layer("TripletLoss", "dnnh_loss", m["loss_weight"], dict(margin=m["margin"]),
                             implementation)]
        what = "DNNH: divide-and-encode, triplet ranking loss (TripletLoss, margin 1, weight 2)"
    elif method == "dsh":
        param = dict(margin=m["margin_per_bit"] * bits, alpha=m["alpha"])
        parts.append(_pair_loss("DSHLoss", "dsh_loss", "dsh_loss_param", param, 1.0, implementation))
        what = "DSH: pairwise loss over all pairs of the batch"
    elif method == "dqn":
        iters_per_epoch = -(-(train_rows or D.DEFAULT_TRAIN_SIZE[dataset]) // (3 * bs))
        parts += [_pair_loss("PairwiseCosineLoss", "cosine_loss", "pairwise_cosine_loss_param",
                             dict(dissimilar_value=m["dissimilar_value"]), 1.0, implementation),
                  pq_layer(bits, iters_per_epoch, train_rows or D.DEFAULT_TRAIN_SIZE[dataset],
                           m["pq_weight"], total_iters)]
        what = "DQN: pairwise cosine loss + product quantization loss (codebooks by k-means)"
    else:
        raise KeyError(method)
    suffix = f"step{step}" if method == "tqn" else method
    head = (f"# {dataset} / {scale} scale / {bits} bits / {what}.\n"
            f"# Generated by python -m prototxt.generate from prototxt/description.py; do not edit.\n")
    return head + f'name: "{dataset}_{scale}_{bits}bits_{suffix}"\n' + "\n".join(parts) + "\n"


def _pair_loss(kind, name, field, param, weight, implementation):
    """A loss on ("hash", "label") over the pairs of the batch: C++ or the Python layer."""
    if implementation == "python":
        return layer(name, "Python", ["hash", "label"], [name],
                     python_param=dict(module="tqn_layers", layer=kind + "Layer",
                                       param_str=_param_text(param)),
                     loss_weight=[weight])
    return layer(name, kind, ["hash", "label"], [name], **{field: param}, loss_weight=[weight])


def extract_net(dataset, scale, bits, images, batch, mean_file=None, method="tqn"):
    """Reads `images` (LMDB) with a stock Data layer (test-time transform: centre crop, no
    mirror) and outputs "hash" (the method's latent features) and "label"; DQN's net also holds
    the ProductQuantizationLoss layer, whose blobs bring the trained codebooks."""
    cfg = D.config(dataset, scale)
    parts = [
        layer("data", "Data", top=["data", "label"],
              transform_param=transform(cfg["backbone"], False, mean_file),
              data_param=dict(source=images, batch_size=batch, backend=Enum("LMDB"))),
        *backbone(cfg["backbone"]),
        *hash_layers(bits, method),
    ]
    if method == "dqn":
        parts.append(pq_layer(bits, 1, D.pq_shape(bits)[1], 0.0))
    suffix = "" if method == "tqn" else f"_{method}"
    return (f"# {dataset} / {scale} scale / {bits} bits{'' if method == 'tqn' else ' / ' + method}: "
            f"feature extraction.\n"
            f"# Generated by python -m prototxt.generate from prototxt/description.py.\n"
            f'name: "{dataset}_{scale}_{bits}bits_extract{suffix}"\nstate {{ phase: TEST }}\n'
            + "\n".join(parts) + "\n")


def warm_start_net(dataset, scale, images, batch, mean_file=None):
    """OURS, at CPU scale only: the backbone + a softmax classifier on the train labels, read with a
    stock Data layer (train transform). Its weights stand in for the paper's ImageNet
    pre-training: every method's first step starts from them (same layer names), the classifier
    ("warm_start_classifier") is dropped."""
    cfg = D.config(dataset, scale)
    parts = [
        layer("data", "Data", top=["data", "label"],
              transform_param=transform(cfg["backbone"], True, mean_file),
              data_param=dict(source=images, batch_size=batch, backend=Enum("LMDB"))),
        *backbone(cfg["backbone"]),
        _fc("warm_start_classifier", "features", cfg["classes"]),
        layer("warm_start_loss", "SoftmaxWithLoss", ["warm_start_classifier", "label"],
              ["warm_start_loss"]),
        layer("warm_start_accuracy", "Accuracy", ["warm_start_classifier", "label"],
              ["warm_start_accuracy"]),
    ]
    return (f"# {dataset} / {scale} scale: classification warm start of the backbone.\n"
            f"# Generated by python -m prototxt.generate from prototxt/description.py.\n"
            f'name: "{dataset}_{scale}_warm_start"\n' + "\n".join(parts) + "\n")


def solver(dataset, scale, step, net_path, max_iter, snapshot_prefix, seed, base_lr=None,
           display=20, weights=None, snapshots=1):
    """SGD with the paper's momentum and weight decay; `snapshots` snapshots a run (the last at
    the end). `weights` (SolverParameter.weights) initializes the net, e.g. step 2 from step
    1's final model."""
    cfg = D.config(dataset, scale)
    t = D.PAPER_TRAINING
    lr = base_lr if base_lr is not None else cfg["base_lr"][step - 1]
    d = dict(net=net_path, base_lr=float(lr), lr_policy=t["lr_policy"], momentum=t["momentum"],
             weight_decay=t["weight_decay"], max_iter=int(max_iter), display=display,
             snapshot=max(1, int(max_iter) // max(1, snapshots)), snapshot_prefix=snapshot_prefix,
             random_seed=int(seed),
             solver_mode=Enum("CPU"), type="SGD")
    if weights:
        d["weights"] = weights
    return (f"# {dataset} / {scale} scale / step {step}. Generated by python -m prototxt.generate.\n"
            + "\n".join(_fields(d, 0)) + "\n")


def default_files():
    """{relative path: text} of prototxt/generated/."""
    files = {}
    for (dataset, scale), cfg in sorted(D.CONFIGS.items()):
        data = D.DEFAULT_DATA.get(scale, "data/{dataset}").format(dataset=dataset)
        mean = f"{data}/mean.binaryproto" if D.BACKBONES[cfg["backbone"]].get("mean_from_file") else None
        for bits in cfg["bits"]:
            folder = f"{dataset}_{scale}/{bits}bits"
            files[f"{folder}/extract.prototxt"] = extract_net(
                dataset, scale, bits, f"{data}/lmdb/query", 100, mean)
            for step in (1, 2):
                net_path = f"prototxt/generated/{folder}/step{step}_net.prototxt"
                files[f"{folder}/step{step}_net.prototxt"] = train_net(
                    dataset, scale, bits, step, f"{data}/lmdb/train", f"{data}/triplets.txt", mean)
                its = [D.iterations(e, D.DEFAULT_TRAIN_SIZE[dataset], D.PAPER_TRAINING["batch_triplets"])
                       for e in D.PAPER_TRAINING["epochs"]]
                run = f"runs/{dataset}_{scale}_{bits}bits"
                files[f"{folder}/step{step}_solver.prototxt"] = solver(
                    dataset, scale, step, net_path, its[step - 1], f"{run}/step{step}", seed=1,
                    weights=f"{run}/step1_iter_{its[0]}.caffemodel" if step == 2 else None)
            # The other methods: one step of TQN's two steps' iterations (the same budget).
            for method in ("dsh", "dnnh", "dqn"):
                lists = "shuffled.txt" if D.METHODS[method]["batches"] == "shuffled" else "triplets.txt"
                net_path = f"prototxt/generated/{folder}/{method}_net.prototxt"
                files[f"{folder}/{method}_net.prototxt"] = train_net(
                    dataset, scale, bits, 1, f"{data}/lmdb/train", f"{data}/{lists}", mean,
                    method=method, train_rows=D.DEFAULT_TRAIN_SIZE[dataset], total_iters=sum(its))
                files[f"{folder}/{method}_solver.prototxt"] = solver(
                    dataset, scale, 1, net_path, sum(its), f"runs/{dataset}_{scale}_{bits}bits_{method}/step1",
                    seed=1)
                files[f"{folder}/extract_{method}.prototxt"] = extract_net(
                    dataset, scale, bits, f"{data}/lmdb/query", 100, mean, method)
    return files


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if prototxt/generated/ is stale")
    args = ap.parse_args(argv)
    files = default_files()
    stale = []
    for rel, text in files.items():
        path = os.path.join(GENERATED, rel)
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            stale.append(rel)
            if not args.check:
                write_text(path, text)
    if args.check and stale:
        print(f"prototxt/generated/ is out of date ({len(stale)} files, e.g. {stale[0]}): "
              f"run python -m prototxt.generate", file=sys.stderr)
        return 1
    print(f"{len(files)} files, {len(stale)} {'stale' if args.check else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
