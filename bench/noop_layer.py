"""A pycaffe Python loss layer that computes nothing: it writes a 0 loss and zero gradients to
its three bottoms. bench/bench_training.py times it as the floor of any Python loss layer (the
cost of crossing from Caffe into Python and back, per forward and backward)."""
import caffe


class NoopTripletLossLayer(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[...] = 0

    def backward(self, top, propagate_down, bottom):
        for k in range(3):
            if propagate_down[k]:
                bottom[k].diff[...] = 0
