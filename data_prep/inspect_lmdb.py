"""Prints what an LMDB of Caffe Datums holds.

    python -m data_prep.inspect_lmdb LMDB [--limit N] [--labels N]

Record count, whether the keys are the contiguous %08d row keys, datum shape(s) C x H x W, raw or encoded
(and the image format), and the label histogram (all labels when there are at most --labels of them,
default 20; else the most frequent ones and a summary).
"""
import argparse
import collections
import sys

from .datum import parse_datum
from .errors import DataPrepError, run_cli
from .lmdb_io import KEY_FORMAT, iter_records


def _format_of(data):
    if data[:8] == b'\x89PNG\r\n\x1a\n':
        return 'png'
    if data[:2] == b'\xff\xd8':
        return 'jpg'
    return 'unknown'


def inspect(path, limit=None):
    """-> dict: count, contiguous_keys, shapes Counter, kinds Counter, labels Counter."""
    count, contiguous = 0, True
    shapes, kinds, labels = collections.Counter(), collections.Counter(), collections.Counter()
    for k, v in iter_records(path):
        if contiguous and k != (KEY_FORMAT % count).encode():
            contiguous = False
        count += 1
        if limit is not None and count > limit:
            continue
        try:
            d = parse_datum(v)
        except Exception as e:  # google.protobuf.message.DecodeError
            raise DataPrepError(f'{path}: record {k.decode(errors="replace")!r} is not a Datum ({e}); the LMDB '
                                'is damaged: rerun data_prep.build with the same options') from None
        if d.encoded:
            kinds['encoded ' + _format_of(d.data)] += 1
            shapes[(d.channels, d.height, d.width) if d.height else 'n/a'] += 1
        else:
            kinds['raw' if d.data else ('float' if len(d.float_data) else 'empty')] += 1
            shapes[(d.channels, d.height, d.width)] += 1
        labels[d.label] += 1
    return {'count': count, 'contiguous_keys': contiguous, 'shapes': shapes, 'kinds': kinds, 'labels': labels,
            'inspected': min(count, limit) if limit is not None else count}


def report(path, info, max_labels=20):
    lines = [f'{path}', f'  records: {info["count"]:,}' +
             ('' if info['inspected'] == info['count'] else f' (first {info["inspected"]:,} inspected)'),
             '  keys: ' + ('none: the LMDB is empty (an interrupted or failed build? rerun data_prep.build)'
                            if info['count'] == 0 else
                            '%08d row keys 00000000..' + f'{info["count"] - 1:08d}' if info['contiguous_keys']
                            else 'not the contiguous %08d row keys')]
    for kind, n in sorted(info['kinds'].items()):
        lines.append(f'  {kind}: {n:,}')
    for shape, n in sorted(info['shapes'].items(), key=lambda x: -x[1]):
        s = 'x'.join(map(str, shape)) if isinstance(shape, tuple) else shape
        lines.append(f'  datum shape CxHxW {s}: {n:,}')
    labels = info['labels']
    lines.append(f'  labels: {len(labels):,} distinct')
    if len(labels) <= max_labels:
        for lab in sorted(labels):
            lines.append(f'    {lab}: {labels[lab]:,}')
    elif labels:
        counts = sorted(labels.values())
        lines.append(f'    per label: min {counts[0]:,}, median {counts[len(counts) // 2]:,}, max {counts[-1]:,}')
        for lab, n in labels.most_common(max_labels):
            lines.append(f'    {lab}: {n:,}')
        lines.append(f'    ... ({len(labels) - max_labels:,} more; --labels N to show more)')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m data_prep.inspect_lmdb', description=__doc__.split('\n\n')[0])
    p.add_argument('lmdb', nargs='+', help='LMDB folder(s)')
    p.add_argument('--limit', type=int, help='parse only the first N records (the count is always complete)')
    p.add_argument('--labels', type=int, default=20, help='show all labels up to this many distinct ones')
    args = p.parse_args(argv)
    return run_cli('inspect_lmdb', lambda: [print(report(path, inspect(path, args.limit), args.labels))
                                            for path in args.lmdb])


if __name__ == '__main__':
    sys.exit(main())
