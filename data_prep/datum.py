"""Caffe's Datum and BlobProto messages, and conversions between them and images/arrays.

`caffe_pb2()` imports pycaffe's `caffe.proto.caffe_pb2` on first use (never at import time of
data_prep). When pycaffe is not importable (not built yet, or PYTHONPATH without tools/env.sh) it falls back
to a built-in copy of just the three messages used here (Datum, BlobProto, BlobShape), declared with the
same field numbers and types as caffe.proto, so the bytes written are identical (tests compare them with
pycaffe's when it is importable). `caffe_pb2_origin()` tells which one is in use.
"""
import numpy as np

from .errors import DataPrepError

_MODULE = None
_ORIGIN = None


def caffe_pb2():
    global _MODULE, _ORIGIN
    if _MODULE is None:
        try:
            from caffe.proto import caffe_pb2 as m  # noqa: PLC0415 (lazy on purpose)
            _MODULE, _ORIGIN = m, 'pycaffe'
        except ImportError:
            _MODULE, _ORIGIN = builtin_caffe_pb2(), 'built-in (pycaffe not importable)'
    return _MODULE


def caffe_pb2_origin():
    caffe_pb2()
    return _ORIGIN


class _Messages:
    pass


_BUILTIN = None


def builtin_caffe_pb2():
    """Datum, BlobProto and BlobShape, as in BVLC caffe.proto (proto2), in a private descriptor pool."""
    global _BUILTIN
    if _BUILTIN is not None:
        return _BUILTIN
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name='data_prep_caffe_subset.proto', package='data_prep_caffe',
                                             syntax='proto2')

    def message(name, fields):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, extra in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if 'type_name' in extra:
                f.type_name = extra['type_name']
            if 'default' in extra:
                f.default_value = extra['default']
            if extra.get('packed'):
                f.options.packed = True

    OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message('BlobShape', [('dim', 1, F.TYPE_INT64, REP, {'packed': True})])
    message('BlobProto', [
        ('shape', 7, F.TYPE_MESSAGE, OPT, {'type_name': '.data_prep_caffe.BlobShape'}),
        ('data', 5, F.TYPE_FLOAT, REP, {'packed': True}),
        ('diff', 6, F.TYPE_FLOAT, REP, {'packed': True}),
        ('double_data', 8, F.TYPE_DOUBLE, REP, {'packed': True}),
        ('double_diff', 9, F.TYPE_DOUBLE, REP, {'packed': True}),
        ('num', 1, F.TYPE_INT32, OPT, {'default': '0'}),
        ('channels', 2, F.TYPE_INT32, OPT, {'default': '0'}),
        ('height', 3, F.TYPE_INT32, OPT, {'default': '0'}),
        ('width', 4, F.TYPE_INT32, OPT, {'default': '0'}),
    ])
    message('Datum', [
        ('channels', 1, F.TYPE_INT32, OPT, {}),
        ('height', 2, F.TYPE_INT32, OPT, {}),
        ('width', 3, F.TYPE_INT32, OPT, {}),
        ('data', 4, F.TYPE_BYTES, OPT, {}),
        ('label', 5, F.TYPE_INT32, OPT, {}),
        ('float_data', 6, F.TYPE_FLOAT, REP, {}),
        ('encoded', 7, F.TYPE_BOOL, OPT, {'default': 'false'}),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    fd = pool.FindFileByName(fdp.name)
    get = getattr(message_factory, 'GetMessageClass', None)        # protobuf >= 4.22
    if get is None:
        get = message_factory.MessageFactory(pool).GetPrototype
    mod = _Messages()
    for name in ('BlobShape', 'BlobProto', 'Datum'):
        setattr(mod, name, get(fd.message_types_by_name[name]))
    _BUILTIN = mod
    return mod


ENCODINGS = ('raw', 'png', 'jpg')
JPEG_QUALITY = 95
PNG_COMPRESSION = 3


def encode_image(bgr, encode):
    """uint8 [H, W, C] (BGR for C=3) -> PNG/JPEG bytes via cv2.imencode."""
    import cv2
    img = bgr[:, :, 0] if bgr.shape[2] == 1 else bgr
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if encode == 'jpg' else \
        [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
    ok, buf = cv2.imencode('.' + encode, np.ascontiguousarray(img), params)
    if not ok:
        raise DataPrepError(f'cv2.imencode could not write {encode}')
    return buf.tobytes()


def decode_image(data, what='image'):
    """PNG/JPEG bytes -> uint8 [H, W, C] as the Caffe data layer decodes them (native channels, BGR)."""
    import cv2
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataPrepError(f'{what}: encoded bytes do not decode')
    return img[:, :, None] if img.ndim == 2 else img


def make_datum(bgr, label, encoded_bytes=None):
    """A Datum of an image uint8 [H, W, C] in Caffe's channel order (BGR for C=3).

    Raw: data = C x H x W bytes (byte-identical to convert_imageset's raw Datum). Encoded: data = the PNG/JPEG bytes, encoded=True (channels/height/width are
    set too, for inspection; Caffe ignores them for encoded data and decodes the bytes).
    """
    pb = caffe_pb2()
    h, w, c = bgr.shape
    d = pb.Datum(channels=c, height=h, width=w, label=int(label))
    if encoded_bytes is None:
        d.data = np.ascontiguousarray(bgr.transpose(2, 0, 1)).tobytes()
        d.encoded = False          # explicit, as convert_imageset writes it (same bytes as Caffe's tool)
    else:
        d.data = encoded_bytes
        d.encoded = True
    return d


def parse_datum(value):
    d = caffe_pb2().Datum()
    d.ParseFromString(value)
    return d


def datum_to_image(d, what='datum'):
    """Datum -> uint8 [H, W, C] in the stored channel order (BGR for 3 channels)."""
    if d.encoded:
        return decode_image(d.data, what)
    c, h, w = d.channels, d.height, d.width
    if len(d.data) != c * h * w:
        raise DataPrepError(f'{what}: {len(d.data)} data bytes for shape {c}x{h}x{w}')
    return np.frombuffer(d.data, np.uint8).reshape(c, h, w).transpose(1, 2, 0)


def mean_blob(mean_chw):
    """float [C, H, W] -> BlobProto 1 x C x H x W (legacy num/channels/height/width, as compute_image_mean)."""
    c, h, w = mean_chw.shape
    b = caffe_pb2().BlobProto(num=1, channels=c, height=h, width=w)
    b.data.extend(np.asarray(mean_chw, np.float32).ravel().tolist())
    return b


def read_mean_blob(data):
    b = caffe_pb2().BlobProto()
    b.ParseFromString(data)
    if b.HasField('shape'):
        shape = tuple(b.shape.dim)
    else:
        shape = (b.num, b.channels, b.height, b.width)
    return np.array(b.data, dtype=np.float32).reshape(shape)
