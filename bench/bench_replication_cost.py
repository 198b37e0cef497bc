"""What the replication (`python -m tools.replicate all` / `study`, CPU or features scale) costs on
this machine when it runs alone: figures, not tests.

    . tools/env.sh
    python bench/bench_replication_cost.py --work WORK [--model 24bits/dnnh-recommended]
    python bench/bench_replication_cost.py --scale features --work WORK [--model seed1/48bits/tqn]

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
At `--scale features` the one-time backbone extraction is reported as its own record kept
(features.json: seconds, images and their mirrors), apart from `all`'s cost over finished features.
Writes bench/results/replication_cost[_features].json and its section of bench/results/README.md.
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
    ap.add_argument("--scale", choices=("cpu", "features"), default="cpu")
    ap.add_argument("--model", help="the run (under WORK/runs) whose final model is extracted and evaluated "
                                    "(default 24bits/dnnh-recommended; features: seed1/48bits/tqn)")
    args = ap.parse_args(argv)
    args.model = args.model or ("seed1/48bits/tqn" if args.scale == "features" else "24bits/dnnh-recommended")
    name = "replication_cost" + ("_features" if args.scale == "features" else "")
    from tools.pipeline import blobs as B
    from tools.pipeline import evaluation as E
    from tools.pipeline import extraction as X
    from tools.pipeline.training import final_model

    work = os.path.abspath(args.work)
    run = os.path.join(work, "runs", args.model)
    if not os.path.exists(os.path.join(run, "params.json")):
        raise SystemExit(f"{run}: no params.json; pass --model BITSbits/LABEL of a finished run")
    result = dict(bench=name, schema=common.SCHEMA, machine=common.machine(),
                  command="python bench/bench_replication_cost.py " + " ".join(argv or sys.argv[1:]),
                  config=dict(work=work, model=args.model, scale=args.scale), sections={}, goals=[])
    rate, n_rates = rate_percentile(work)
    its_all = trained_iterations(os.path.join(work, "runs")) + \
        trained_iterations(os.path.join(work, "warm_start"))
    its_study = trained_iterations(os.path.join(work, "study"))
    models = len(glob.glob(os.path.join(work, "blobs", "**", "cifar10-2", "meta.json"), recursive=True))
    features = []
    for marker in sorted(glob.glob(os.path.join(work, "features", "*", "features.json"))):
        with open(marker) as f:
            record = json.load(f)
        if record["inputs"].get("derived_from"):    # copied from another's rows, not extracted
            continue
        images = sum(n for k, n in record["counts"].items() if not k.endswith("_mirror")
                     and k not in record.get("same_as", {}))
        features.append(dict(folder=os.path.basename(os.path.dirname(marker)), seconds=record["seconds"],
                             images=images, views=2 * images, workers=record.get("workers")))
    if features:
        result["sections"]["features"] = dict(status="done", extractions=features)
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
    if args.scale == "features":
        result["goals"].append(dict(goal="the features-scale `all` (every method, 3 seeds, the paper's 40 + 40 "
                                         "epochs) within 60 minutes on 2 cores, over finished features",
                                    met=total <= 60, detail=f"{total:.0f} min alone"))
    else:
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
    if args.scale == "features":
        md[0] = md[0].replace("## Replication cost", "## Replication cost at the features scale")
        md += [f"Goal: {result['goals'][0]['goal']}: **{'met' if result['goals'][0]['met'] else 'not met'}** "
               f"({result['goals'][0]['detail']}).", ""]
        for x in features:
            md.append(f"Once, before `all`: the backbone features of {x['images']:,} images and their mirrors "
                      f"({x['folder']}), {x['seconds'] / 60:.0f} min as recorded in its features.json"
                      + (f" ({x['workers']} chunk workers)" if x.get("workers") else "") + ".")
        md.append("")
    print("\n".join(md))
    common.write_result(name, result)
    common.update_readme(name, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
