"""EfficientNet-Lite (torch state dict) -> a native BVLC Caffe deploy.prototxt + .caffemodel.

The state dict is the `efficientnet_lite_pytorch` layout (`_conv_stem`, `_bn0`, `_blocks.i.
{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`, `_conv_head`, `_bn1`, `_fc`), read only
with `data_prep.safe_pickle.load_torch_state_dict`. That model (the package's `model.py`/`utils.py`):

* TF "SAME" convolutions: the total padding `(ceil(i/s)-1)*s + k - i` is split `total//2` before,
  the rest after. At stride 1 (odd k) that is Caffe's symmetric `pad = (k-1)//2`. At stride 2 on an
  even input it is asymmetric (k=3: 0 before, 1 after; k=5: 1 before, 2 after), which Caffe's `pad`
  cannot say; here such a convolution gets a (k+1) x (k+1) kernel whose first row and column are
  zero and `pad = k//2`: exactly the same sums, at (k+1)^2/k^2 the cost for those five layers.
  Exact for every input size whose stride-2 layers all see even sizes, i.e. multiples of 32
  (`check_input_size`); the torch model's static padding is computed for 224, also a multiple of 32.
* BatchNorm eps 1e-3 (`batch_norm_epsilon=1e-3`) -> BatchNorm [mean, var, 1] + Scale [gamma, beta].
* ReLU6 -> Clip [0, 6] (this Caffe has the Clip layer). No squeeze-excitation in Lite models.
* Skip connection (x + input) when a block has stride 1 and equal in/out channels -> Eltwise SUM.
* Head: 1x1 conv + BN + ReLU6, average pooling (global here; `data_prep.features.feature_deploy`
  keeps this last Pooling layer as the feature output), InnerProduct `_fc` (1000 ImageNet logits).
  Dropout is identity at test time and is left out.

Strides are not in the state dict: EfficientNet-Lite0's stride-2 blocks are 1, 3, 5 and 11
(stages r1_k3_s11 / r2_k3_s22 / r2_k5_s22 / r3_k3_s22 / r3_k5_s11 / r4_k5_s22 / r1_k3_s11; the
stem also has stride 2). Input: RGB, (x - 127) / 128 (efficientnet_lite_builder.py's MEAN_RGB and
STDDEV_RGB, the TF training preprocessing the weights come from).
"""
import dataclasses
import os

import numpy as np

from .errors import DataPrepError

LITE0_STRIDE2_BLOCKS = (1, 3, 5, 11)
BN_EPS = 1e-3
INPUT_MEAN_RGB = (127.0, 127.0, 127.0)
INPUT_STD = 128.0


@dataclasses.dataclass(frozen=True)
class Block:
    index: int
    expand: bool        # has _expand_conv
    kernel: int
    stride: int
    cin: int
    cmid: int
    cout: int

    @property
    def skip(self):
        return self.stride == 1 and self.cin == self.cout


def blocks_of(state, stride2_blocks=LITE0_STRIDE2_BLOCKS, source='state dict'):
    """The MBConv blocks described by a state dict, in order."""
    n = 1 + max((int(k.split('.')[1]) for k in state if k.startswith('_blocks.')), default=-1)
    if n == 0:
        raise DataPrepError(f'{source}: no `_blocks.*` entries; not an EfficientNet state dict')
    out = []
    for i in range(n):
        p = f'_blocks.{i}.'
        try:
            dw = state[p + '_depthwise_conv.weight']
            proj = state[p + '_project_conv.weight']
        except KeyError as e:
            raise DataPrepError(f'{source}: block {i} has no {e.args[0]}; not an EfficientNet-Lite state dict') \
                from None
        if any(k.startswith(p + '_se_') for k in state):
            raise DataPrepError(f'{source}: block {i} has squeeze-excitation; only Lite models (no SE) convert')
        expand = p + '_expand_conv.weight' in state
        cmid, k = dw.shape[0], dw.shape[2]
        cin = state[p + '_expand_conv.weight'].shape[1] if expand else cmid
        out.append(Block(i, expand, int(k), 2 if i in stride2_blocks else 1, int(cin), int(cmid),
                         int(proj.shape[0])))
    return out


def check_input_size(size):
    if size % 32:
        raise DataPrepError(f'EfficientNet-Lite input size {size}: use a multiple of 32 (e.g. 64, 96, 128), '
                            'so that TF "same" padding is reproduced exactly')


def _same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _conv_weight(w, stride):
    """Caffe kernel and pad for a TF-same convolution weight (see the module text)."""
    k = w.shape[2]
    if stride == 1:
        return w, (k - 1) // 2
    big = np.zeros(w.shape[:2] + (k + 1, k + 1), np.float32)
    big[:, :, 1:, 1:] = w
    return big, k // 2


def deploy_text(state, input_size=224, stride2_blocks=LITE0_STRIDE2_BLOCKS, source='state dict'):
    """(prototxt text, {caffe layer name: [blobs as float32 arrays]})."""
    check_input_size(input_size)
    lines = ['name: "EfficientNetLite"',
             f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 '
             f'dim: {input_size} dim: {input_size} }} }} }}']
    blobs = {}

    def conv(name, bottom, top, w, stride, group=1):
        w = np.asarray(w, np.float32)
        kw, pad = _conv_weight(w, stride)
        grp = f' group: {group}' if group > 1 else ''
        lines.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" '
                     f'convolution_param {{ num_output: {w.shape[0]} kernel_size: {kw.shape[2]} stride: {stride} '
                     f'pad: {pad}{grp} bias_term: false }} }}')
        blobs[name] = [kw]

    def bn(name, top, prefix):
        try:
            mean, var = state[prefix + '.running_mean'], state[prefix + '.running_var']
            gamma, beta = state[prefix + '.weight'], state[prefix + '.bias']
        except KeyError as e:
            raise DataPrepError(f'{source}: missing {e.args[0]}') from None
        lines.append(f'layer {{ name: "{name}" type: "BatchNorm" bottom: "{top}" top: "{top}" '
                     f'batch_norm_param {{ use_global_stats: true eps: {BN_EPS} }} }}')
        lines.append(f'layer {{ name: "{name}_scale" type: "Scale" bottom: "{top}" top: "{top}" '
                     'scale_param { bias_term: true } }')
        blobs[name] = [np.asarray(mean, np.float32), np.asarray(var, np.float32), np.ones(1, np.float32)]
        blobs[name + '_scale'] = [np.asarray(gamma, np.float32), np.asarray(beta, np.float32)]

    def relu6(name, top):
        lines.append(f'layer {{ name: "{name}" type: "Clip" bottom: "{top}" top: "{top}" '
                     'clip_param { min: 0 max: 6 } }')

    def need(key):
        if key not in state:
            raise DataPrepError(f'{source}: missing {key}; not an EfficientNet-Lite state dict')
        return state[key]

    conv('stem', 'data', 'stem', need('_conv_stem.weight'), 2)
    bn('stem_bn', 'stem', '_bn0')
    relu6('stem_relu6', 'stem')
    x = 'stem'
    for b in blocks_of(state, stride2_blocks, source):
        p, n = f'_blocks.{b.index}.', f'b{b.index}'
        h = x
        if b.expand:
            conv(f'{n}_expand', h, f'{n}_expand', state[p + '_expand_conv.weight'], 1)
            bn(f'{n}_expand_bn', f'{n}_expand', p + '_bn0')
            relu6(f'{n}_expand_relu6', f'{n}_expand')
            h = f'{n}_expand'
        conv(f'{n}_dw', h, f'{n}_dw', state[p + '_depthwise_conv.weight'], b.stride, group=b.cmid)
        bn(f'{n}_dw_bn', f'{n}_dw', p + '_bn1')
        relu6(f'{n}_dw_relu6', f'{n}_dw')
        conv(f'{n}_project', f'{n}_dw', f'{n}_project', state[p + '_project_conv.weight'], 1)
        bn(f'{n}_project_bn', f'{n}_project', p + '_bn2')
        if b.skip:
            lines.append(f'layer {{ name: "{n}_add" type: "Eltwise" bottom: "{n}_project" bottom: "{x}" '
                         f'top: "{n}_add" eltwise_param {{ operation: SUM }} }}')
            x = f'{n}_add'
        else:
            x = f'{n}_project'
    conv('head', x, 'head', need('_conv_head.weight'), 1)
    bn('head_bn', 'head', '_bn1')
    relu6('head_relu6', 'head')
    lines.append('layer { name: "pool" type: "Pooling" bottom: "head" top: "pool" '
                 'pooling_param { pool: AVE global_pooling: true } }')
    fc_w, fc_b = need('_fc.weight'), need('_fc.bias')
    lines.append(f'layer {{ name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" '
                 f'inner_product_param {{ num_output: {fc_w.shape[0]} }} }}')
    blobs['fc'] = [np.asarray(fc_w, np.float32), np.asarray(fc_b, np.float32)]
    return '\n'.join(lines) + '\n', blobs


def write_caffemodel(deploy_path, blobs, weights_path):
    """Fills the net of `deploy_path` with `blobs` through pycaffe and saves it to `weights_path`."""
    import caffe
    caffe.set_mode_cpu()
    net = caffe.Net(deploy_path, caffe.TEST)
    names = set(net.params)
    if names != set(blobs):
        raise DataPrepError(f'{deploy_path}: parameter layers {sorted(names ^ set(blobs))} do not match')
    for name, arrays in blobs.items():
        params = net.params[name]
        if len(params) != len(arrays):
            raise DataPrepError(f'layer {name}: {len(params)} blobs in Caffe, {len(arrays)} converted')
        for blob, arr in zip(params, arrays):
            if tuple(blob.data.shape) != tuple(arr.shape):
                raise DataPrepError(f'layer {name}: Caffe blob {blob.data.shape}, converted {arr.shape}')
            blob.data[...] = arr
    net.save(weights_path)


def sha256_of(path):
    from .outputs import sha256_file
    return sha256_file(path)


def convert(pth_path, out_dir, stride2_blocks=LITE0_STRIDE2_BLOCKS, quiet=True):
    """Converts `pth_path` into `out_dir/deploy.prototxt` + `out_dir/weights.caffemodel`, atomically,
    with `out_dir/conversion.json` (data_prep.outputs marker) recording the .pth's sha256; a rerun
    for the same .pth does nothing. Returns {'deploy', 'weights', 'record'}."""
    from .outputs import OutputLock, atomic_dir, completed, mark_complete
    from .safe_pickle import load_torch_state_dict
    out_dir = os.path.abspath(out_dir)
    marker = os.path.join(out_dir, 'conversion.json')
    inputs = {'pth': os.path.basename(pth_path), 'pth_sha256': sha256_of(pth_path),
              'converter': 'data_prep.effnet_caffe', 'stride2_blocks': list(stride2_blocks),
              'bn_eps': BN_EPS, 'padding': 'tf-same via zero-padded (k+1) kernel at stride 2'}
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    result = {'deploy': os.path.join(out_dir, 'deploy.prototxt'),
              'weights': os.path.join(out_dir, 'weights.caffemodel')}
    with OutputLock(parent, name=f'.{os.path.basename(out_dir)}.lock', what='EfficientNet conversion'):
        record = completed(marker, inputs)
        if record is None:
            state = load_torch_state_dict(pth_path)
            text, blobs = deploy_text(state, source=pth_path, stride2_blocks=stride2_blocks)
            with atomic_dir(out_dir) as tmp:
                os.makedirs(tmp)
                with open(os.path.join(tmp, 'deploy.prototxt'), 'w') as f:
                    f.write(text)
                write_caffemodel(os.path.join(tmp, 'deploy.prototxt'), blobs,
                                 os.path.join(tmp, 'weights.caffemodel'))
                mark_complete(os.path.join(tmp, 'conversion.json'), inputs,
                              outputs=['deploy.prototxt', 'weights.caffemodel'],
                              parameters=int(sum(a.size for v in blobs.values() for a in v)))
            record = completed(marker, inputs)
        return dict(result, record=record)
