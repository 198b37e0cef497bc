"""A numpy forward of an EfficientNet-Lite torch state dict, written from the torch model's own
definition (efficientnet_lite_pytorch: TF "same" padding split total//2 before, rest after; BN eps 1e-3;
ReLU6; skip when stride 1 and in == out channels; average pool; fc), independent of the Caffe converter."""
import numpy as np


def _pad_same(x, k, s):
    h = x.shape[2]
    out = -(-h // s)
    total = max((out - 1) * s + k - h, 0)
    a, b = total // 2, total - total // 2
    return np.pad(x, ((0, 0), (0, 0), (a, b), (a, b)))


def conv(x, w, s, depthwise=False):
    k = w.shape[2]
    xp = _pad_same(x.astype(np.float64), k, s)
    n, c, h, _ = x.shape
    out = -(-h // s)
    y = np.zeros((n, w.shape[0], out, out))
    for dy in range(k):
        for dx in range(k):
            patch = xp[:, :, dy:dy + s * (out - 1) + 1:s, dx:dx + s * (out - 1) + 1:s]
            if depthwise:
                y += patch * w[None, :, 0, dy, dx, None, None]
            else:
                y += np.einsum('nchw,oc->nohw', patch, w[:, :, dy, dx])
    return y


def bn(x, st, p):
    g, b = st[p + '.weight'], st[p + '.bias']
    m, v = st[p + '.running_mean'], st[p + '.running_var']
    return ((x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-3)) * g[None, :, None, None] \
        + b[None, :, None, None]


def relu6(x):
    return np.clip(x, 0, 6)


def forward(st, x, stride2_blocks=(1, 3, 5, 11)):
    """-> (pooled features [n, C], logits [n, classes]) of NCHW input x (already normalised)."""
    st = {k: np.asarray(v, np.float64) for k, v in st.items()}
    x = relu6(bn(conv(x, st['_conv_stem.weight'], 2), st, '_bn0'))
    n = 1 + max(int(k.split('.')[1]) for k in st if k.startswith('_blocks.'))
    for i in range(n):
        p = f'_blocks.{i}.'
        s = 2 if i in stride2_blocks else 1
        h = x
        if p + '_expand_conv.weight' in st:
            h = relu6(bn(conv(h, st[p + '_expand_conv.weight'], 1), st, p + '_bn0'))
        h = relu6(bn(conv(h, st[p + '_depthwise_conv.weight'], s, depthwise=True), st, p + '_bn1'))
        h = bn(conv(h, st[p + '_project_conv.weight'], 1), st, p + '_bn2')
        if s == 1 and h.shape[1] == x.shape[1]:
            h = h + x
        x = h
    x = relu6(bn(conv(x, st['_conv_head.weight'], 1), st, '_bn1'))
    pooled = x.mean(axis=(2, 3))
    return pooled, pooled @ st['_fc.weight'].T + st['_fc.bias']
