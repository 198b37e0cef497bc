"""This project's pycaffe Python layers and the numpy math they run.

`python_param { module: "tqn_layers" layer: "<name>" }` loads a layer by one of the names below;
the numpy modules (`tqn_layers.losses` for TQN, `dsh`, `dnnh`, `dqn`) are importable without Caffe.
"""
# layer class -> the module defining it (each imports caffe, so load it only when asked for)
_LAYERS = {
    "TripletLossLayer": "caffe_layers",
    "TripletQuantizationLossLayer": "caffe_layers",
    "DSHLossLayer": "dsh_layer",
    "PiecewiseThresholdLayer": "dnnh_layer",
    "PairwiseCosineLossLayer": "dqn_layer",
    "ProductQuantizationLossLayer": "dqn_layer",
}


def __getattr__(name):
    if name in _LAYERS:
        import importlib
        return getattr(importlib.import_module(f".{_LAYERS[name]}", __name__), name)
    raise AttributeError(f"module 'tqn_layers' has no attribute {name!r}")
