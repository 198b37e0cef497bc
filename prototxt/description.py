"""The one description every net and solver of this project is generated from.

A configuration is (data set, scale, code length, step). `prototxt.generate` turns it into Caffe
prototxt; `prototxt/generated/` holds the files for the default data locations, and the training
tool writes a run's own copies (with that run's paths and seeds) from the same description.

Paper-exact choices (Section II-C and Table I) are marked PAPER; where the paper is silent the
choice is marked OURS and said why. This is the one place for configuration: the paper's
constants (with `prototxt.tqn_params`, Section II-B and Table I), the nets and methods, the
default data locations of the committed files, the replication's scales and its held-out
studies.
"""
from prototxt import tqn_params

# ---------------------------------------------------------------------------------------------
# Training (Section II-C)
PAPER_TRAINING = dict(
    batch_triplets=32,          # PAPER: "The mini-batch size is 32" (triplets a batch)
    momentum=0.9,               # PAPER
    weight_decay=0.0005,        # PAPER
    epochs=(40, 40),            # PAPER: 40 epochs in step 1 and 40 in step 2
    base_lr=(0.001, 0.0001),    # PAPER: eta = 0.001 in step 1, 0.0001 in step 2
    lr_policy="fixed",          # OURS: the paper names no schedule
    margin=1.6,                 # PAPER: alpha of Eq. 1
    Delta=tqn_params.PAPER_DELTA,   # PAPER: Delta = 0.4 -> alpha_s = 0.16, delta = 0.64
    beta=8.0, gamma=1.0,        # PAPER
)

# ---------------------------------------------------------------------------------------------
# Nets. Every backbone ends in a blob "features"; the latent layer "hash_fc" (N outputs) and its
# Sigmoid "hash" follow (PAPER: "a fully-connected latent layer F with N neurons activated by
# sigmoid function").
BACKBONES = {
    # PAPER: AlexNet (Krizhevsky et al.) with bvlc_alexnet's layer names, so that
    # `--weights bvlc_alexnet.caffemodel` initializes conv1..fc7; 227x227 crops of 256x256 images.
    "alexnet": dict(input_crop=227, mirror=True, mean_values=(104, 117, 123), scale=None),
    # OURS: the CIFAR-10 "quick" net of Caffe's examples up to its 64-unit ip1, for 32x32 images
    # trained from scratch on 2 CPU cores (fwd+bwd of 96 images ~116 ms here).
    "cifar_quick": dict(input_crop=None, mirror=True, mean_from_file=True, scale=None),
    # OURS: a two-layer perceptron for scikit-learn's 8x8 digits (the embedded default data set).
    "digits_mlp": dict(input_crop=None, mirror=False, mean_values=(0,), scale=1 / 255.0),
    # OURS, the features scale: trainable stand-ins for AlexNet's fc6/fc7 (InnerProduct + ReLU +
    # Dropout 0.5, as AlexNet's) on fixed ImageNet-pretrained backbone features (one float Datum
    # of D values an image, data_prep.features). Width 256, not AlexNet's 4,096: forward +
    # backward of a 96-image batch costs 1.9 ms at 256, 3.9 ms at 512 and 10.9 ms at 1,024 on
    # 2 cores here (caffe time, 48 bits), and the paper's 40 + 40 epochs are 125,000 iterations
    # a TQN model. No Caffe mirror (a feature vector cannot be flipped): the mirror is the
    # mirrored image's own features, chosen per list entry by data_prep (seeded).
    "feature_head": dict(input_crop=None, mirror=False, mean_values=(), scale=None, width=256),
}

# (data set, scale) -> backbone and the data set's facts. alpha_d comes from Table I:
# digits has C = 10 classes like CIFAR-10, so CIFAR-10's row of Table I applies to it.
CONFIGS = {
    ("digits", "cpu"): dict(backbone="digits_mlp", classes=10, bits=(12, 24, 48),
                            table_i="cifar10",
                            # OURS: from scratch on a tiny MLP the paper's step-1 rate (0.001)
                            # barely moves in 40 epochs; 0.01 / 0.001 keeps the paper's 10:1 ratio.
                            base_lr=(0.01, 0.001)),
    ("cifar10", "cpu"): dict(backbone="cifar_quick", classes=10, bits=(12, 24, 48),
                             table_i="cifar10", base_lr=PAPER_TRAINING["base_lr"]),
    ("cifar10", "paper"): dict(backbone="alexnet", classes=10, bits=(12, 24, 48),
                               table_i="cifar10", base_lr=PAPER_TRAINING["base_lr"]),
    # Fixed ImageNet-pretrained features (REPLICATION_SCALES["features"]), the paper's rates.
    ("cifar10", "features"): dict(backbone="feature_head", classes=10, bits=(12, 24, 48),
                                  table_i="cifar10", base_lr=PAPER_TRAINING["base_lr"]),
    ("inshop", "paper"): dict(backbone="alexnet", classes=7982, bits=(48, 96, 192),
                              table_i="inshop", base_lr=PAPER_TRAINING["base_lr"]),
}

# `--dataset images`: the user's own labelled images (data_prep's image folders and list files).
# The net is derived from the data: the backbone takes the LMDB's own size (--resize, or the
# images' own) and channels (grey or colour); the number of classes picks Table I's row for
# alpha_d (prototxt.tqn_params.table_i_row; override with --tqn alpha_d=...).
IMAGES = "images"
IMAGES_CONFIGS = {
    # OURS: the CIFAR-10 quick net (convolutions + pools adapt to the input size; 32x32 colour
    # trains on 2 CPU cores), the paper's learning rates, CIFAR-10's code lengths.
    "cpu": dict(backbone="cifar_quick", bits=(12, 24, 48), base_lr=PAPER_TRAINING["base_lr"]),
    # The features scale on the user's images: fixed features of FEATURE_BACKBONE (data_prep.features,
    # each image and its mirror), the fc6/fc7 stand-ins, the paper's rates.
    "features": dict(backbone="feature_head", bits=(12, 24, 48), base_lr=PAPER_TRAINING["base_lr"]),
}

# The features scale's default backbone and input size: the held-out choice of `tools.replicate
# backbone` on cifar10-holdout (bench/results/replication-features/results/backbone_study.md:
# EfficientNet-Lite0 at 128x128, SDH-48 held-out mAP 0.633 against nsfw's best 0.600). A
# replication with its own backbone_study.json uses that file's choice.
FEATURE_BACKBONE = dict(backbone="efficientnet-lite0", input_size=128)

STEPS = {
    1: dict(loss="TripletLoss", monitor="TripletQuantizationLoss"),
    2: dict(loss="TripletQuantizationLoss", monitor="TripletLoss"),
}


# ---------------------------------------------------------------------------------------------
# Methods: TQN and the systems it is compared with, on the same backbone, data and budget.
# "tqn" trains in two steps (step 1 alone is "triplet-only"); the others in one step ("step1"),
# with the configuration's step-1 learning rate, for as many epochs as TQN's two steps together
# (OURS: the same images seen, so the same budget). Every method reads 3 x batch_triplets images
# an iteration through the TripletData layer: the triplet methods from triplets.txt, the pairwise
# ones (DSH, DQN) from shuffled.txt, a fresh seeded permutation of the train rows each epoch read
# three at a time (data_prep), so a pairwise batch is 96 random images and all their pairs.
METHODS = {
    "tqn": dict(steps=(1, 2), batches="triplets", code_threshold=0.5),
    # DSH (Liu et al., CVPR 2016): linear latent layer, codes = sign.
    "dsh": dict(steps=(1,), batches="shuffled", code_threshold=0.0,
                alpha=0.01,               # DSH's paper (per pair); DSH's released code weighs
                                          # the regularizer half as much (tradeoff 0.01 there
                                          # = alpha 0.005 here, see dsh_loss_layer.hpp)
                margin_per_bit=2.0),      # DSH: m = 2 k
    # DNNH (Lai et al., CVPR 2015): divide-and-encode, triplet ranking loss of margin 1.
    "dnnh": dict(steps=(1,), batches="triplets", code_threshold=0.5,
                 slice_width=8,           # OURS: DNNH sizes its slices by its own net; 8 values
                                          # per bit from an fc+ReLU layer of 8 x bits units
                 epsilon=0.1,             # OURS: the paper gives no value for the band
                 gradient="EXACT",        # OURS: g's own derivative (1 inside the band, 0
                                          # outside); STRAIGHT_THROUGH passes the gradient
                                          # through g unchanged (see TRAINING_OVERRIDES)
                 margin=1.0,              # DNNH: max(0, 1 - (|F-F-|^2 - |F-F+|^2))
                 loss_weight=2.0),        # TripletLoss halves its mean; DNNH's per-triplet loss
                                          # averaged over the batch is TripletLoss x 2
    # DQN (Cao et al., AAAI 2016): fc bottleneck + tanh, pairwise cosine loss, PQ loss.
    "dqn": dict(steps=(1,), batches="shuffled", code_threshold=None,
                bottleneck=300,           # DQN's paper: a 300-unit bottleneck (rounded up to a
                                          # multiple of M)
                dissimilar_value=-1.0,    # DQN's released code (the paper leaves it unsaid)
                pq_weight=1e-4,           # lambda: DQN's released code (q_lambda = 0.0001)
                update_epochs=2,          # DQN: codebooks and codes updated every 2 epochs
                buffer_rows=10000,        # OURS: k-means runs on the most recent 10,000 rows
                kmeans_iterations=20,     # OURS
                centroids=256),           # DQN: K = 256 (8 bits a subspace) where bits % 8 == 0
}


# Method parameters a run may override (tools.train --method-param KEY=VALUE, tools.replicate's
# held-out studies) with the allowed values: only ones that change training, never the
# extraction net, so a model's codes are read the same way whatever it was trained with.
TRAINING_OVERRIDES = {
    "dnnh": {"gradient": ("EXACT", "STRAIGHT_THROUGH")},
}


def method_parameters(name, overrides=None):
    """METHODS[name] with `overrides` ({key: value}) applied; a key or value that is not in
    TRAINING_OVERRIDES[name] is a ValueError naming the allowed ones."""
    m = dict(method(name))
    allowed = TRAINING_OVERRIDES.get(name, {})
    for key, value in (overrides or {}).items():
        if key not in allowed:
            raise ValueError(f"method {name} has no training parameter {key!r} to override; "
                             f"allowed: {', '.join(sorted(allowed)) or 'none'}")
        if value not in allowed[key]:
            raise ValueError(f"method {name}: {key} must be one of {', '.join(allowed[key])}, "
                             f"got {value!r}")
        m[key] = value
    return m


def method(name):
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}") from None


def pq_shape(bits):
    """(M, K) of DQN's product quantizer for a code of `bits` bits = M log2 K: K = 256 (the
    paper's) when 8 divides bits, else K = 64 (OURS: 12 bits = 2 x 6)."""
    for per_subspace in (8, 6):
        if bits % per_subspace == 0:
            return bits // per_subspace, 2 ** per_subspace
    raise ValueError(f"DQN needs a code length divisible by 8 (K = 256) or 6 (K = 64), got {bits}")


def dqn_bottleneck(bits):
    m, _ = pq_shape(bits)
    return m * -(-METHODS["dqn"]["bottleneck"] // m)


def datasets():
    """Every data set name a runner takes (--dataset)."""
    return sorted({d for d, _ in CONFIGS} | {IMAGES})


def scales():
    return sorted({s for _, s in CONFIGS} | set(IMAGES_CONFIGS))


def config(dataset, scale, classes=None):
    """The configuration of (dataset, scale). For `images` it is derived from the data:
    `classes` (the build's number of classes) sets classes and Table I's row; without it both
    are None (enough for the extraction net, not for training)."""
    if dataset == IMAGES:
        if scale not in IMAGES_CONFIGS:
            raise KeyError(f"--dataset images has no {scale!r} scale; known: "
                           f"{', '.join(sorted(IMAGES_CONFIGS))}")
        return dict(IMAGES_CONFIGS[scale], classes=classes,
                    table_i=tqn_params.table_i_row(classes) if classes else None)
    try:
        return CONFIGS[(dataset, scale)]
    except KeyError:
        known = ", ".join(f"{d}/{s}" for d, s in sorted(CONFIGS))
        raise KeyError(f"no configuration for data set {dataset!r} at scale {scale!r}; "
                       f"known: {known}") from None


def alpha_d(dataset, scale, bits, classes=None):
    """Table I's alpha_d (PAPER) for the configuration's data set row (images: the row of its
    number of classes)."""
    row = config(dataset, scale, classes)["table_i"]
    if row is None:
        raise ValueError(f"{dataset}: alpha_d needs the number of classes of the data")
    return tqn_params.table_i_alpha_d(row, bits)


def tqn_parameters(dataset, scale, bits, classes=None, alpha_d_value=None):
    """TripletQuantizationLoss's parameters (PAPER): Table I's alpha_d (or `alpha_d_value`, a
    user's), alpha_s = Delta^2, delta = 4 Delta^2, beta, gamma."""
    t = PAPER_TRAINING
    ad = alpha_d_value if alpha_d_value is not None else alpha_d(dataset, scale, bits, classes)
    return dict(alpha_d=ad, alpha_s=round(t["Delta"] ** 2, 6),
                delta=round(4 * t["Delta"] ** 2, 6), beta=t["beta"], gamma=t["gamma"])


def iterations(epochs, train_size, batch_triplets):
    """One epoch = every training image once as an anchor."""
    return epochs * -(-train_size // batch_triplets)


# ---------------------------------------------------------------------------------------------
# Default data locations of the committed files in prototxt/generated/: what
# `python -m data_prep.build --out data/<set>` writes, relative to the repository (run
# `caffe train` from there), with the size of its training set.
DEFAULT_TRAIN_SIZE = {"digits": 1438, "cifar10": 50000, "inshop": 38494}
# The features scale reads a feature training folder (python -m data_prep.features
# --training-data), not the image build.
DEFAULT_DATA = {"features": "data/{dataset}_features"}

# The training tool snapshots every step this many times (for resuming), OURS.
SNAPSHOTS_PER_STEP = 4


# ---------------------------------------------------------------------------------------------
# The replication of the paper's CIFAR-10 artefacts (tools/replicate.py).
REPLICATION = dict(
    dataset="cifar10", classes=10, bits=(12, 24, 48),
    train_size=50000,                   # PAPER-comparable: the official 50,000 training images
    batch_triplets=PAPER_TRAINING["batch_triplets"],
    # Both protocols share the official training set and the 10,000 test queries: cifar10-2
    # (database = the training images) and dsh (database = the queries, each left out of its
    # own ranking, as DSH's evaluation); each model is extracted once (cifar10-2) and the dsh
    # blobs are its queries against themselves.
    protocols=("dsh", "cifar10-2"),
    held_out_protocol="cifar10-holdout",   # OURS: 45,000 / 5,000 of the training set, for studies
)

REPLICATION_SCALES = {
    # OURS: a budget that fits ~2 hours on 2 CPU cores for everything (see README).
    "cpu": dict(iters=(600, 300), warm_start_iters=1000, data_args={},
                # OURS: DSH's loss grows with its margin m = 2 x bits; at the shared step-1 rate
                # (0.001) its linear codes diverged to NaN within 23 iterations at 24 bits
                # (training loss; no evaluation involved), so DSH trains at 0.0001 here.
                method_lr={"dsh": 1e-4}),
    # PAPER: 40 + 40 epochs, ImageNet weights, 256x256 images cropped to 227.
    "paper": dict(iters=None, warm_start_iters=0, data_args={"resize": (256, 256)}, method_lr={}),
    # PAPER schedule (40 + 40 epochs, the paper's rates, batch, momentum, decay, Table I) on fixed
    # features of an ImageNet-pretrained backbone (OURS: frozen, as fine-tuning a ResNet on 2
    # CPU cores does not fit), every method, three seeds (data seed = solver seed = s: its
    # triplet lists, mirror choices and Caffe's random_seed).
    "features": dict(iters=None, warm_start_iters=0, data_args={}, method_lr={},
                     seeds=(1, 2, 3), **FEATURE_BACKBONE),
}

# The features scale's backbone and input size, compared on held-out training data by
# `tools.replicate backbone` (OURS): each candidate's features of a seeded sample of
# `train_sample` held-in images fit SDH at `bits` bits, scored by binary mAP (tie-aware) of
# cifar10-holdout's 1,000 held-out queries against its 4,000 held-out database images. The best
# backbone wins; its input size is the cheapest (ms an image) within `tolerance` of its best.
BACKBONE_STUDY = dict(
    candidates=(("nsfw-resnet50-1by2", 64), ("nsfw-resnet50-1by2", 96), ("nsfw-resnet50-1by2", 128),
                ("efficientnet-lite0", 96), ("efficientnet-lite0", 128)),
    train_sample=5000, bits=48, method="sdh", tolerance=0.01)

# TQN step-2 settings tried on held-out training data (protocol cifar10-holdout) by
# `tools.replicate study`: the paper's, and one change each (OURS). The best by held-out binary
# mAP becomes the "held-out choice" shown beside the paper-exact rows.
STUDY_VARIANTS = {
    "paper": dict(tqn={}, step2_lr=None),
    "beta=1": dict(tqn={"beta": 1.0}, step2_lr=None),
    "step2 lr/10": dict(tqn={}, step2_lr=1e-5),
}
STUDY_DEFAULT = "paper"

# DNNH settings tried on the same held-out data (OURS): our default (g's exact gradient, which is
# zero outside the band, so saturated sigmoids stop learning), the straight-through gradient,
# and a tenth of the learning rate.
DNNH_STUDY_VARIANTS = {
    "default": dict(method_param={}, lr=None),
    "straight-through": dict(method_param={"gradient": "STRAIGHT_THROUGH"}, lr=None),
    "lr/10": dict(method_param={}, lr=1e-4),
}
DNNH_STUDY_DEFAULT = "default"
