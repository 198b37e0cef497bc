"""The Caffe stages as a library: typed entry points taking resolved settings, used by the
commands in tools/ (train, extract, evaluate, retrieval) and by the runners (main_job, compare,
replicate).

  caffe         the `caffe` binary: running `caffe train` with its log in a file and progress
  training      TrainSpec -> both TQN steps or one step of DSH / DNNH / DQN, resumable
  warm_start    the CPU scale's classification warm start of a backbone
  extraction    a trained net over a data set's LMDBs -> saved blobs
  blobs         the saved-blobs format: the one writer and reader (validated), the dsh view
  evaluation    saved blobs -> metrics.json (Hamming, ADC, Euclidean; code health); baselines
  caffe_log     Caffe's training logs -> loss curves
  report        tables (markdown + CSV), the paper's cited figures, plots, summaries
"""
