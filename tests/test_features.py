"""data_prep.features: a backbone's pooled features of every image and its mirror, as float Datum LMDBs.

The backbone is made here (conv -> BatchNorm -> Scale -> ReLU -> AVE pool -> fc classifier, its own
caffemodel written with pycaffe), so nothing is downloaded; the features are checked against a numpy
computation of the same net. The real nsfw backbone runs when it is cached."""
import functools
import json
import os

import numpy as np
import pytest

import data_prep.readers
from data_prep import features as F
from data_prep.build import BuildSpec, build
from data_prep.errors import DataPrepError
from data_prep.fakes import fake_cifar10, write_cifar10_binary

caffe = pytest.importorskip('caffe')

DEPLOY = '''name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 7 dim: 7 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 5 kernel_size: 3 pad: 1 stride: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { use_global_stats: true } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 7 stride: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 2 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''
MEAN = (100.0, 110.0, 120.0)


def make_backbone(folder):
    rng = np.random.default_rng(5)
    deploy = os.path.join(folder, 'deploy.prototxt')
    with open(deploy, 'w') as f:
        f.write(DEPLOY)
    caffe.set_mode_cpu()
    net = caffe.Net(deploy, caffe.TEST)
    p = {'conv': [rng.normal(0, 0.01, (5, 3, 3, 3)), rng.normal(0, 0.1, 5)],
         'bn': [rng.normal(0, 0.2, 5), rng.uniform(0.5, 2, 5), np.array([2.0])],
         'scale': [rng.uniform(0.5, 1.5, 5), rng.normal(0, 0.3, 5)],
         'fc': [rng.normal(0, 1, (2, 5)), rng.normal(0, 1, 2)]}
    for name, blobs in p.items():
        for blob, value in zip(net.params[name], blobs):
            blob.data[...] = value
    weights = os.path.join(folder, 'tiny.caffemodel')
    net.save(weights)
    return deploy, weights, p


def reference(bgr, p, size, std=1.0, rgb=False):
    """numpy: resize, minus mean (/ std, channels reversed for rgb), 3x3 conv (pad 1), BN (stats / scale
    factor), Scale, ReLU, global mean."""
    import cv2
    x = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32).transpose(2, 0, 1)
    if rgb:
        x = x[::-1]
    x = ((x - np.asarray(MEAN, np.float32)[:, None, None]) / np.float32(std)).astype(np.float64)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    w, b = p['conv']
    conv = np.zeros((5, size, size))
    for dy in range(3):
        for dx in range(3):
            conv += np.einsum('oc,chw->ohw', w[:, :, dy, dx], xp[:, dy:dy + size, dx:dx + size])
    conv += b[:, None, None]
    mean, var, factor = p['bn'][0] / p['bn'][2][0], p['bn'][1] / p['bn'][2][0], 1
    conv = (conv - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * factor
    conv = conv * p['scale'][0][:, None, None] + p['scale'][1][:, None, None]
    return np.maximum(conv, 0).mean(axis=(1, 2))


@pytest.fixture(scope='module')
def image_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('feat')
    real = data_prep.readers.read_cifar10
    data_prep.readers.read_cifar10 = lambda p: real(p, expected=None)
    try:
        images, labels = fake_cifar10(5, seed=3)
        archive = write_cifar10_binary(str(tmp / 'cifar-10-binary.tar.gz'), images, labels)
        build(BuildSpec(dataset='cifar10', out=str(tmp / 'images'), archive=archive, protocol='cifar10-2',
                        epochs=1, batch_triplets=4, singletons='negatives', quiet=True))
    finally:
        data_prep.readers.read_cifar10 = real
    return tmp, images, labels


def test_feature_deploy_globalises_last_pool_and_drops_classifier():
    text, top = F.feature_deploy(DEPLOY, 24, 7)
    assert top == 'pool'
    assert 'global_pooling: true' in text and 'kernel_size: 7' not in text
    assert '"fc"' not in text and 'Softmax' not in text
    assert 'dim: 7\n' in text and text.count('dim: 24') == 2
    with pytest.raises(DataPrepError, match='Pooling'):
        F.feature_deploy('layer { name: "d" type: "Input" top: "d" }', 8, 1)


def test_features_match_numpy_reference_mirror_resume_and_rerun(image_build, tmp_path):
    tmp, images, labels = image_build
    deploy, weights, p = make_backbone(str(tmp_path))
    out = tmp_path / 'features'
    spec = F.FeatureSpec(images=str(tmp / 'images'), out=str(out), deploy=deploy, weights=weights,
                         input_size=12, mean_bgr=MEAN, backbone='tiny', batch_size=4, chunk=7, quiet=True)
    rec = F.extract(spec)
    assert not rec['skipped'] and rec['computed_chunks'] == 4 + 1  # train 25 rows: chunks of 7, 7, 7, 4; query 5: 1
    assert rec['dimension'] == 5 and rec['counts']['train'] == 25 and rec['counts']['query'] == 5
    assert rec['inputs']['weights_sha256'] == F.sha256_file(weights)
    assert os.readlink(out / 'lmdb' / 'database') == 'train'
    assert os.readlink(out / 'lmdb' / 'database_mirror') == 'train_mirror'
    feats, labs = F.read_feature_lmdb(str(out / 'lmdb' / 'query'))
    mfeats, mlabs = F.read_feature_lmdb(str(out / 'lmdb' / 'query_mirror'))
    assert feats.shape == (5, 5) and labs.tolist() == labels[25:].tolist() == mlabs.tolist()
    for i in range(5):
        bgr = np.ascontiguousarray(images[25 + i][:, :, ::-1])
        np.testing.assert_allclose(feats[i], reference(bgr, p, 12), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(mfeats[i], reference(np.ascontiguousarray(bgr[:, ::-1]), p, 12),
                                   rtol=1e-4, atol=1e-5)
    assert not np.allclose(feats, mfeats)
    # the Datums are what Caffe's Data layer reads: channels = D, 1 x 1, float_data
    from data_prep.lmdb_io import iter_records
    from data_prep.datum import parse_datum
    d = parse_datum(next(iter_records(str(out / 'lmdb' / 'train')))[1])
    assert (d.channels, d.height, d.width, len(d.float_data), d.data) == (5, 1, 1, 5, b'')
    # a finished folder: nothing to do
    again = F.extract(spec)
    assert again['skipped'] and again['computed_chunks'] == 0
    # interrupted: the marker gone, some chunks kept -> only the missing chunks are computed
    train_feats = F.read_feature_lmdb(str(out / 'lmdb' / 'train'))[0]
    calls = []

    def crashing_factory(deploy, weights):
        net = F.caffe_net(deploy, weights)
        real_forward = net.forward

        def forward(*a, **k):
            calls.append(1)
            if len(calls) > 7:  # query: 10 inputs = 3 batches; train chunk 0: 14 = 4
                raise KeyboardInterrupt
            return real_forward(*a, **k)
        net.forward = forward
        return net
    os.unlink(out / 'features.json')
    with open(out / 'lmdb' / 'train' / 'data.mdb', 'r+b') as f:  # damage: the rerun must redo the work
        f.write(b'\0' * 64)
    with pytest.raises(KeyboardInterrupt):
        F.extract(spec, net_factory=crashing_factory)
    assert not (out / 'features.json').exists()
    kept = sorted(os.listdir(out / '.parts'))
    assert len([k for k in kept if k.endswith('.npz')]) == 2  # query's chunk and train's first
    rec = F.extract(spec)
    assert rec['reused_chunks'] == 2 and rec['computed_chunks'] == 3
    np.testing.assert_array_equal(F.read_feature_lmdb(str(out / 'lmdb' / 'train'))[0], train_feats)
    assert not (out / '.parts').exists()
    # another input size is another input: recomputed
    rec = F.extract(spec.__class__(**dict(spec.__dict__, input_size=10)))
    assert not rec['skipped'] and rec['computed_chunks'] == 5
    assert json.loads((out / 'features.json').read_text())['inputs']['input_size'] == 10


def test_chunk_workers_compute_what_one_process_computes(image_build, tmp_path):
    tmp, _, _ = image_build
    deploy, weights, _ = make_backbone(str(tmp_path))
    base = dict(images=str(tmp / 'images'), deploy=deploy, weights=weights, input_size=12, mean_bgr=MEAN,
                backbone='tiny', batch_size=4, chunk=7, quiet=True)
    one = F.extract(F.FeatureSpec(out=str(tmp_path / 'one'), **base))
    two = F.extract(F.FeatureSpec(out=str(tmp_path / 'two'), workers=2, **base))
    assert two['computed_chunks'] == one['computed_chunks'] == 5 and two['inputs'] == one['inputs']
    for split in ('train', 'train_mirror', 'query', 'query_mirror'):
        a, la = F.read_feature_lmdb(str(tmp_path / 'one' / 'lmdb' / split))
        b, lb = F.read_feature_lmdb(str(tmp_path / 'two' / 'lmdb' / split))
        assert la.tolist() == lb.tolist()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)   # one BLAS thread each: rounding only
    assert not (tmp_path / 'two' / '.parts').exists()
    assert F.extract(F.FeatureSpec(out=str(tmp_path / 'two'), workers=2, **base))['skipped']
    # the chunks really ran in two processes, not this one
    pids = tmp_path / 'pids'
    pids.mkdir()
    F.extract(F.FeatureSpec(out=str(tmp_path / 'three'), workers=2, **base),
              net_factory=functools.partial(pid_net, str(pids)))
    seen = {int(p.name) for p in pids.iterdir()}
    assert len(seen) == 2 and os.getpid() not in seen
    # a worker that dies (Caffe aborts on a weights file it cannot parse) is a clear error
    bad = tmp_path / 'bad.caffemodel'
    bad.write_bytes(b'not a caffemodel' * 64)
    with pytest.raises(DataPrepError, match='worker process died'):
        F.extract(F.FeatureSpec(out=str(tmp_path / 'four'), workers=2, **dict(base, weights=str(bad))))
    assert not (tmp_path / 'four' / 'features.json').exists()


def test_encode_image_lmdb_computes_what_the_extraction_stored(image_build, tmp_path):
    tmp, _, _ = image_build
    deploy, weights, _ = make_backbone(str(tmp_path))
    out = tmp_path / 'features'
    F.extract(F.FeatureSpec(images=str(tmp / 'images'), out=str(out), deploy=deploy, weights=weights, input_size=12,
                            mean_bgr=MEAN, backbone='tiny', batch_size=4, chunk=7, quiet=True))
    n = F.encode_image_lmdb(str(out), str(tmp / 'images' / 'lmdb' / 'query'), str(tmp_path / 'new'))
    new, labels = F.read_feature_lmdb(str(tmp_path / 'new'))
    stored, stored_labels = F.read_feature_lmdb(str(out / 'lmdb' / 'query'))
    assert n == 5 and labels.tolist() == stored_labels.tolist()
    np.testing.assert_allclose(new, stored, rtol=1e-5, atol=1e-6)
    with open(weights, 'ab') as f:     # another backbone file than the one recorded: refused
        f.write(b'\0')
    with pytest.raises(DataPrepError, match='gone or changed'):
        F.encode_image_lmdb(str(out), str(tmp / 'images' / 'lmdb' / 'query'), str(tmp_path / 'new2'))
    assert not (tmp_path / 'new2').exists()


def test_cli_keeps_caffes_log_off_the_console(image_build, tmp_path):
    import subprocess
    import sys
    tmp, _, _ = image_build
    deploy, weights, _ = make_backbone(str(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith('GLOG_')}
    r = subprocess.run([sys.executable, '-m', 'data_prep.features', '--images', str(tmp / 'images'),
                        '--out', str(tmp_path / 'f'), '--deploy', deploy, '--weights', weights,
                        '--mean', ','.join(str(m) for m in MEAN), '--input-size', '12', '--chunk', '7'],
                       capture_output=True, text=True, env=env, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'net.cpp' not in r.stdout + r.stderr and 'features: 5-d' in r.stdout
    assert 'net.cpp' in (tmp_path / 'f' / 'caffe.log').read_text()


def pid_net(folder, deploy, weights):
    """A chunk worker's net factory that leaves its process id in `folder` (picklable)."""
    open(os.path.join(folder, str(os.getpid())), 'w').close()
    return F.caffe_net(deploy, weights)


def test_std_and_channel_order_are_inputs(image_build, tmp_path):
    tmp, images, labels = image_build
    deploy, weights, p = make_backbone(str(tmp_path))
    base = dict(images=str(tmp / 'images'), out=str(tmp_path / 'f'), deploy=deploy, weights=weights,
                input_size=12, mean_bgr=MEAN, batch_size=4, chunk=50, quiet=True)
    rec = F.extract(F.FeatureSpec(**base))
    assert 'std' not in rec['inputs'] and 'channels' not in rec['inputs']  # defaults: older records stay valid
    rgb = F.extract(F.FeatureSpec(**base, std=2.0, channels='rgb'))
    assert not rgb['skipped'] and (rgb['inputs']['std'], rgb['inputs']['channels']) == (2.0, 'rgb')
    assert 'RGB float (x - mean) / std' in rgb['inputs']['preprocess']
    feats, _ = F.read_feature_lmdb(str(tmp_path / 'f' / 'lmdb' / 'query'))
    for i in range(5):
        bgr = np.ascontiguousarray(images[25 + i][:, :, ::-1])
        np.testing.assert_allclose(feats[i], reference(bgr, p, 12, std=2.0, rgb=True), rtol=1e-4, atol=1e-5)
    assert F.extract(F.FeatureSpec(**base, std=2.0, channels='rgb'))['skipped']


def test_missing_images_build_is_a_clear_error(tmp_path):
    deploy, weights, _ = make_backbone(str(tmp_path))
    spec = F.FeatureSpec(images=str(tmp_path / 'nope'), out=str(tmp_path / 'o'), deploy=deploy,
                         weights=weights, input_size=8, mean_bgr=MEAN, quiet=True)
    with pytest.raises(DataPrepError, match='dataset.json'):
        F.extract(spec)


def test_real_nsfw_backbone_when_cached(tmp_path):
    from data_prep.backbones import cached_backbone
    files = cached_backbone('nsfw-resnet50-1by2')
    if files is None:
        pytest.skip('nsfw-resnet50-1by2 not cached (python -m data_prep.backbones nsfw-resnet50-1by2)')
    text, top = F.feature_deploy(open(files['deploy.prototxt']).read(), 64, 2)
    path = tmp_path / 'feat.prototxt'
    path.write_text(text)
    net = F.caffe_net(str(path), files['resnet_50_1by2_nsfw.caffemodel'])
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    spec = F.FeatureSpec(images='', out='', deploy='', weights='', input_size=64,
                         mean_bgr=F.BACKBONE_MEANS['nsfw-resnet50-1by2'], batch_size=4)
    feats = F._forward(net, top, imgs, spec)
    assert feats.shape == (2, 2, 1024) and np.isfinite(feats).all() and (feats >= 0).all()
    assert not np.allclose(feats[0, 0], feats[1, 0])
