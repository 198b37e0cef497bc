"""A classification warm start of the backbone through the stock `caffe train -solver` (OURS).

The paper fine-tunes ImageNet-pretrained AlexNet; from scratch on 2 CPU cores there is no such
model, and the CPU-scale net trained from scratch with the paper's learning rate sits at the
triplet loss's symmetric saddle (every latent output equal). `warm_start` trains the backbone
with a softmax classifier on the train set's labels (the same labels every method is supervised
with) at the configuration's step-1 learning rate, batch 3 x 32 images; its final weights
(OUT/warm_start_iter_<iters>.caffemodel) are the `weights` of every method's first step, so all
start from the same backbone. OUT/params.json records its seed and parameters and is its
completion marker (data_prep.outputs); a rerun skips it.
"""
import os

from data_prep.outputs import completed, mark_complete, write_text
from prototxt import description as D
from prototxt import generate as G
from tools.pipeline.caffe import caffe_binary, git_commit, run_caffe
from tools.pipeline.training import load_manifest


def warm_start(data, dataset, scale, iters, out, seed=1, batch=96, base_lr=None, quiet=False):
    """Trains (or finds) the warm start; returns the path of its final model."""
    manifest = load_manifest(data)
    cfg = D.config(dataset, scale)
    out = os.path.abspath(out)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    model = os.path.join(out, f"warm_start_iter_{iters}.caffemodel")
    lr = base_lr if base_lr is not None else cfg["base_lr"][0]
    plan = dict(dataset=dataset, scale=scale, data=os.path.abspath(data), iterations=iters,
                batch=batch, base_lr=lr, solver_seed=seed, protocol=manifest.get("protocol"),
                data_seed=manifest.get("seed"))
    params = os.path.join(out, "params.json")
    if completed(params, plan):
        return model
    mean = os.path.join(data, "mean.binaryproto")
    net = G.warm_start_net(dataset, scale, os.path.join(os.path.abspath(data), "lmdb", "train"), batch,
                           mean if os.path.exists(mean) else None)
    net_path = os.path.join(out, "warm_start_net.prototxt")
    write_text(net_path, net)
    solver = G.solver(dataset, scale, 1, net_path, iters, os.path.join(out, "warm_start"), seed,
                      base_lr=lr, display=max(1, min(50, iters // 40)))
    solver_path = os.path.join(out, "warm_start_solver.prototxt")
    write_text(solver_path, solver)
    cmd = [caffe_binary(), "train", f"-solver={solver_path}"]
    if not quiet:
        print(f"warm start: {iters} iterations of softmax classification, lr {lr}", flush=True)
    seconds = run_caffe(cmd, os.path.join(out, "logs", "warm_start.log"), iters, "warm start", quiet)
    mark_complete(params, plan, [os.path.basename(model)], seconds=round(seconds, 1),
                  commit=git_commit())
    return model
