"""Binary and product-quantized codes: making them, ranking them exactly, scoring the ranking,
indexing them (numpy, a small C kernel, faiss; no Caffe).

  codes          binarization, the on-disk packing, Hamming distances, code health
  metrics        exact tie-aware and index-order retrieval metrics (Hamming and Euclidean)
  pq             product quantizer codes: encoding, DQN's asymmetric (ADC) search and metrics
  native         the optional C kernels (native.c) of the three above, built on first use
  binary_index   faiss binary indexes of codes and the exact Hamming top-k
  baselines      classical hashing: LSH, ITQ, SDH
"""
