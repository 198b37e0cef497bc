"""What the CPU-scale replication (`python -m tools.replicate all` / `study`) costs on this
machine when it runs alone: figures, not tests.

    . tools/env.sh
    python bench/bench_replication_cost.py --work WORK [--model 24bits/dnnh-recommended]

WORK is a finished replication work folder (`tools.replicate ... --work WORK`). The replication's
own records (summary.json "cost") hold the wall seconds each part took when it ran, which
overstate the cost when parts ran side by side. This bench instead
  training    counts the iterations every run folder of WORK trained (params.json plans, and the
              warm starts), and takes the iteration rate of an unshared machine from their Caffe
              logs (the 90th percentile of the "iter/s" lines: the shared stretches are slower);
  extraction  extracts one model (--model, a run folder under WORK/runs) on the cifar10-2 data,
              60,000 images, alone, into a temporary folder;
  evaluation  evaluates those blobs under both protocols (cifar10-2, and dsh: the queries
              against themselves), alone;
then multiplies out: `all` = its iterations / rate + its models x (extraction + evaluation).
Writes bench/results/replication_cost.json and its section of bench/results/README.md.
"""
import argparse
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

RATE = re.compile(r"\(([0-9.]+) iter/s")


def trained_iterations(folder):
    """Iterations of every params.json under `folder` (runs: their plans' steps; warm starts:
    their plan), each run counted once (a linked step 1 is not retrained)."""
    total = 0
    for path in glob.glob(os.path.join(folder, "**", "params.json"), recursive=True):
        with open(path) as f:
            record = json.load(f)
        plan = record["inputs"]
        if "steps" in record:               # a training run: the steps this folder trained
            total += sum(plan["iterations"][int(s) - 1] for s in record["steps"])
        else:                               # a warm start
            total += plan["iterations"]
    return total


def rate_percentile(folder, q=0.9):
    rates = sorted(float(m.group(1)) for path in glob.glob(os.path.join(folder, "**", "*.log"), recursive=True)
                   for line in open(path, errors="replace") for m in [RATE.search(line)] if m)
    if not rates:
        raise SystemExit(f"{folder}: no Caffe 'iter/s' lines in its logs; is it a replication work folder?")
    return rates[min(len(rates) - 1, int(q * len(rates)))], len(rates)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="a finished tools.replicate work folder")
    ap.add_argument("--model", default="24bits/dnnh-recommended",
                    help="the run (under WORK/runs) whose final model is extracted and evaluated")
    args = ap.parse_args(argv)
    from tools.pipeline import blobs as B
    from tools.pipeline import evaluation as E
    from tools.pipeline import extraction as X
    from tools.pipeline.training import final_model

    work = os.path.abspath(args.work)
    run = os.path.join(work, "runs", args.model)
    if not os.path.exists(os.path.join(run, "params.json")):
        raise SystemExit(f"{run}: no params.json; pass --model BITSbits/LABEL of a finished run")
    result = dict(bench="replication_cost", schema=common.SCHEMA, machine=common.machine(),
                  command="python bench/bench_replication_cost.py " + " ".join(argv or sys.argv[1:]),
                  config=dict(work=work, model=args.model), sections={}, goals=[])
    rate, n_rates = rate_percentile(work)
    its_all = trained_iterations(os.path.join(work, "runs")) + \
        trained_iterations(os.path.join(work, "warm_start"))
    its_study = trained_iterations(os.path.join(work, "study"))
    models = len(glob.glob(os.path.join(work, "blobs", "*bits", "*", "cifar10-2", "meta.json")))
    result["sections"]["training"] = dict(status="done", iterations_all=its_all, iterations_study=its_study,
                                          rate_p90=rate, rate_lines=n_rates)
    print(f"training: all {its_all:,} iterations, study {its_study:,}; rate {rate:.2f} it/s "
          f"(90th percentile of {n_rates} log lines)", flush=True)

    with open(os.path.join(run, "params.json")) as f:
        p = json.load(f)["inputs"]
    model = final_model(run, len(p["iterations"]), p["iterations"][-1])
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        start = time.monotonic()
        X.extract(X.ExtractSpec(data=p["data"], dataset=p["dataset"], scale=p["scale"], bits=p["bits"],
                                weights=model, out=os.path.join(tmp, "c2"), method=p["method"]))
        extraction = time.monotonic() - start
        print(f"extraction of {args.model} (60,000 images): {extraction:.1f} s", flush=True)
        start = time.monotonic()
        E.evaluate(os.path.join(tmp, "c2"), num_classes=10)
        eval_c2 = time.monotonic() - start
        start = time.monotonic()
        E.evaluate(B.write_dsh_view(os.path.join(tmp, "c2"), os.path.join(tmp, "dsh")), num_classes=10)
        eval_dsh = time.monotonic() - start
    print(f"evaluation: cifar10-2 {eval_c2:.1f} s, dsh {eval_dsh:.1f} s", flush=True)
    result["sections"]["per_model"] = dict(status="done", extraction_s=round(extraction, 1),
                                           evaluation_cifar10_2_s=round(eval_c2, 1),
                                           evaluation_dsh_s=round(eval_dsh, 1), models=models)
    minutes = dict(training=its_all / rate / 60, extraction=models * extraction / 60,
                   evaluation=models * (eval_c2 + eval_dsh) / 60)
    total = sum(minutes.values())
    study_min = its_study / rate / 60
    result["sections"]["estimate"] = dict(status="done", all_minutes={k: round(v, 1) for k, v in minutes.items()},
                                          all_total_minutes=round(total, 1),
                                          study_training_minutes=round(study_min, 1))
    result["goals"].append(dict(goal="the CPU-scale Table II + III run in about 2 hours on 2 cores",
                                met=total <= 132, detail=f"{total:.0f} min alone (met: within 10% of 120)"))
    md = [f"## Replication cost (`{result['command']}`)", "",
          f"Machine: {common.machine_line(result['machine'])}.", "",
          "| part of `tools.replicate all` | basis | minutes alone |", "|---|---|---:|",
          f"| training | {its_all:,} iterations at {rate:.2f} it/s (90th percentile of {n_rates} "
          f"Caffe log lines) | {minutes['training']:.0f} |",
          f"| extraction | {models} models x {extraction:.0f} s ({args.model}, measured) | "
          f"{minutes['extraction']:.0f} |",
          f"| evaluation | {models} models x ({eval_c2:.0f} s cifar10-2 + {eval_dsh:.0f} s dsh, measured) | "
          f"{minutes['evaluation']:.0f} |",
          f"| **total** | | **{total:.0f}** |", "",
          f"The study (`tools.replicate study`) trains {its_study:,} more iterations: "
          f"{study_min:.0f} min, plus small extractions.", ""]
    print("\n".join(md))
    common.write_result("replication_cost", result)
    common.update_readme("replication_cost", "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
