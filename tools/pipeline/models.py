"""Trained models as the runners use them: train a run, then extract and evaluate each model it
yields (a TQN run yields two: its step 1, "triplet", and its step 2, "tqn").

    models = train_models(TrainSpec(...))          # {label: Model}
    blobs_meta, result = score(models["tqn"], data, blobs_dir, eval_dir)

Every stage skips what is done (tools/pipeline/training.py, extraction.py, evaluation.py), so a
runner is a short sequence of these calls that can be rerun over its folders at no cost.
"""
import os
from dataclasses import dataclass

from tools.pipeline import caffe_log, evaluation, extraction
from tools.pipeline.training import final_model, train

# The steps of a run a model owns (for its cost): triplet-only is TQN's step 1, TQN its step 2.
OWN_STEPS = {"triplet": ("1",), "tqn": ("2",)}


@dataclass
class Model:
    label: str        # the table row's key: triplet, tqn, dsh, dnnh, dqn, or a variant's label
    method: str       # the method whose extraction net reads it (tqn for triplet)
    weights: str      # its final .caffemodel
    run: str          # its run folder (params.json)
    record: dict      # the run's params.json
    bits: int
    dataset: str
    scale: str

    @property
    def plan(self):
        return self.record["inputs"]

    @property
    def iterations(self):
        """The iterations it rests on, e.g. "600" (triplet) or "600+300" (TQN)."""
        its = self.plan["iterations"]
        return "+".join(map(str, its[:1] if self.label == "triplet" else its))

    def training_seconds(self, own=False):
        """Wall seconds of the run's steps it rests on (triplet-only: step 1; the others: every
        step its run trained), or with own=True of those it owns (TQN: step 2 only, so that a
        sum over models counts every step once), as recorded when they ran; None when a step
        has no record. A resumed step counts all its invocations: its record does since they are
        added at its end; a record written before that counted only the last, so its step's log
        (every invocation's time stamps) is read too and the larger figure taken."""
        steps = self.record["steps"]
        wanted = OWN_STEPS.get(self.label, tuple(steps)) if own else \
            (("1",) if self.label == "triplet" else tuple(steps))
        secs = [steps.get(s, {}).get("seconds") for s in wanted]
        if None in secs or not secs:
            return None
        for i, s in enumerate(wanted):
            if steps[s].get("resumed_from"):
                secs[i] = max(secs[i], caffe_log.file_wall_seconds(caffe_log.step_log(self.run, s)))
        return round(sum(secs), 1)


def train_models(spec, labels=None):
    """Trains the run of `spec` (a TrainSpec) and returns its models {label: Model}: a TQN run
    gives "triplet" (step 1) and, when step 2 ran, "tqn"; another method one model under its
    own name, or under labels[method] when given (e.g. a held-out variant's label)."""
    record = train(spec)
    its = record["inputs"]["iterations"]
    run = os.path.abspath(spec.out)
    common = dict(run=run, record=record, bits=spec.bits, dataset=spec.dataset, scale=spec.scale)
    labels = labels or {}
    if spec.method != "tqn":
        label = labels.get(spec.method, spec.method)
        return {label: Model(label, spec.method, final_model(run, 1, its[0]), **common)}
    out = {}
    if 1 in spec.steps or os.path.exists(final_model(run, 1, its[0])):
        out["triplet"] = Model("triplet", "tqn", final_model(run, 1, its[0]), **common)
    if 2 in spec.steps:
        label = labels.get("tqn", "tqn")
        out[label] = Model(label, "tqn", final_model(run, 2, its[1]), **common)
    return out


def score(model, data, blobs_dir, eval_dir, num_classes=None, verbose=False):
    """Extracts `model` over the data set `data` into blobs_dir (Caffe's log: blobs_dir.log, or
    the console with verbose=True) and evaluates it into eval_dir: (the blobs' meta.json, the
    evaluation)."""
    meta = extraction.extract(extraction.ExtractSpec(
        data=data, dataset=model.dataset, scale=model.scale, bits=model.bits, weights=model.weights,
        out=blobs_dir, method=model.method, verbose=verbose))
    return meta, evaluation.evaluate(blobs_dir, out=eval_dir, num_classes=num_classes)
