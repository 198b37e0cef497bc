"""The features scale's backbone features of an image build: computed once by data_prep.features
into <root>/<backbone>-<input size> ("custom-<size>" for your own Caffe backbone), one chunk worker
a core, pycaffe's set-up log in that folder's caffe.log (not on the console). The main job and
tools.replicate both go through here; each then writes the seeded data folders the head trains
from (data_prep.features.training_data)."""
import os

from data_prep import features as F


def features_name(backbone, input_size, own=None):
    return f"{'custom' if own else backbone}-{input_size}"


def backbone_features(images, root, backbone, input_size, own=None, quiet=False):
    """The features folder of the image build `images` (computed, or found complete)."""
    features = os.path.join(root, features_name(backbone, input_size, own))
    spec = F.backbone_spec(images, features, backbone, input_size, own=own, quiet=quiet)
    F.extract(spec, net_factory=F.logged_net(os.path.join(features, "caffe.log")))
    return features
