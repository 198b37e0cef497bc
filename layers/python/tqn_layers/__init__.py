"""This project's pycaffe Python layers and the numpy math they run.

`python_param { module: "tqn_layers" layer: "TripletLossLayer" }` (or
"TripletQuantizationLossLayer") loads the layers; `tqn_layers.losses` is importable
without Caffe.
"""
_LAYERS = ("TripletLossLayer", "TripletQuantizationLossLayer")


def __getattr__(name):  # the layers import caffe, so load them only when asked for
    if name in _LAYERS:
        from . import caffe_layers
        return getattr(caffe_layers, name)
    raise AttributeError(f"module 'tqn_layers' has no attribute {name!r}")
