"""Caffe's model and solver-state files, checked before training trusts them.

Three checks, each a clear error (PipelineError) or a reason string, read with pycaffe's
caffe_pb2 (no net is built except by `backbone_shapes`):

- `model_problem(path)`: a .caffemodel parses as a NetParameter and holds at least one layer
  with blobs (an empty or truncated file does not: Caffe would load it silently as "no layers to
  copy" and train from fresh weights).
- `state_problem(state, iteration)`: a .solverstate parses, its `iter` is the one its name
  says, its `learned_net` is a sound model of the same iteration, and its `history` (one blob
  per learnable parameter: SGD's momentum) matches that model's parameter blobs in number and
  size. Caffe itself stops on a truncated state with `Check failed: history_size` and nothing
  says which file to remove; training skips such a snapshot for the previous good one instead.
- `check_initial_weights(weights, expected)`: every layer that should come from a `--weights`
  file (the backbone's parametric layers: for AlexNet conv1 ... fc7) is in it with the same blob
  shapes. `caffe train --weights` copies layers by name and ignores the rest, so a file with other
  names would otherwise train from random initialisation without a word.
"""
import os

from tools.pipeline.errors import PipelineError


def _caffe_pb2():
    from caffe.proto import caffe_pb2
    return caffe_pb2


def _parse(message, path):
    """`message` parsed from `path`, or the reason it cannot be."""
    from google.protobuf.message import DecodeError
    try:
        with open(path, "rb") as f:
            message.ParseFromString(f.read())
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    except (DecodeError, RuntimeError, ValueError) as e:
        return f"is not a readable {type(message).__name__} ({e}): truncated or damaged"
    return None


def blob_shape(blob):
    """A BlobProto's shape as a tuple without leading 1s (legacy num/channels/height/width blobs
    of old models compare equal to N-d ones, as Caffe's own copy does)."""
    dims = list(blob.shape.dim) if blob.HasField("shape") else \
        [blob.num, blob.channels, blob.height, blob.width]
    return _strip(dims)


def _strip(dims):
    dims = [int(d) for d in dims]
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return tuple(dims)


def model_layers(path):
    """{layer name: [blob shapes]} of a .caffemodel's layers with blobs (V1 `layers` too), or
    raises PipelineError naming the file."""
    net = _caffe_pb2().NetParameter()
    problem = _parse(net, path)
    if problem:
        raise PipelineError(f"{path} {problem}")
    layers = {}
    for lay in list(net.layer) + list(net.layers):
        if len(lay.blobs):
            layers[lay.name] = [blob_shape(b) for b in lay.blobs]
    if not layers:
        raise PipelineError(f"{path} holds no layer with weights (an empty or truncated model)")
    return layers


def model_problem(path):
    """None when `path` is a sound .caffemodel, else why not."""
    try:
        model_layers(path)
    except PipelineError as e:
        return str(e)
    return None


def _count(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def state_problem(state_path, iteration):
    """None when the snapshot `state_path` (of `iteration`) can be resumed from, else why not."""
    state = _caffe_pb2().SolverState()
    problem = _parse(state, state_path)
    if problem:
        return f"{os.path.basename(state_path)} {problem}"
    if state.iter != iteration:
        return f"{os.path.basename(state_path)} records iteration {state.iter}, not {iteration}"
    model = state.learned_net
    if not os.path.isabs(model):
        model = os.path.join(os.path.dirname(state_path), os.path.basename(model))
    if not os.path.isfile(model):
        return f"its model {os.path.basename(model)} is missing"
    try:
        layers = model_layers(model)
    except PipelineError as e:
        return str(e)
    blobs = [s for shapes in layers.values() for s in shapes]
    history = [blob_shape(b) for b in state.history]
    if len(history) != len(blobs) or \
            sorted(_count(s) for s in history) != sorted(_count(s) for s in blobs):
        return (f"{os.path.basename(state_path)} holds {len(history)} history blobs for the "
                f"{len(blobs)} parameter blobs of its model: truncated or damaged")
    return None


def check_initial_weights(weights, expected):
    """Raises PipelineError unless every layer of `expected` ({name: [shapes]}) is in the
    .caffemodel `weights` with the same blob shapes; the message names each one that is not."""
    if not os.path.isfile(weights):
        raise PipelineError(f"--weights {weights}: no such file")
    have = model_layers(weights)
    missing = [n for n in expected if n not in have]
    wrong = [f"{n} {[list(s) for s in have[n]]} (the net needs {[list(s) for s in expected[n]]})"
             for n in expected if n in have and have[n] != expected[n]]
    if missing or wrong:
        parts = ([f"no layer {', '.join(missing)}"] if missing else []) + \
                ([f"other shapes: {'; '.join(wrong)}"] if wrong else [])
        raise PipelineError(
            f"--weights {weights} does not fit the net's {', '.join(expected)}: {'; '.join(parts)}. "
            f"Caffe copies layers by name and would train those from random initialisation: pass "
            f"weights with these layer names and shapes (e.g. bvlc_alexnet.caffemodel for the "
            f"paper scale)")


def backbone_shapes(net_text, names, workdir):
    """{layer: [blob shapes]} of the layers `names` of the net `net_text` (built with pycaffe,
    not run), in `names` order."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # before pycaffe starts glog: errors only
    import caffe
    caffe.set_mode_cpu()
    path = os.path.join(workdir, "weights_check.prototxt")
    with open(path, "w") as f:
        f.write(net_text)
    try:
        net = caffe.Net(path, caffe.TEST)
        return {n: [_strip(b.data.shape) for b in net.params[n]] for n in names if n in net.params}
    finally:
        os.unlink(path)
