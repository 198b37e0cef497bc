"""Every table, plot and summary the runners write: Table II-style method tables (markdown and
CSV), Table III-style RF/BC tables, the paper's own figures (marked cited), loss-curve and PR
plots, summary.json; all written atomically through data_prep.outputs.

Rows of a method table are dicts with the keys of `ROW_KEYS` (`model_row` and `baseline_row`
make them from an evaluation); `cited_rows` gives the paper's, which appear only beside the data
set and protocols they were reported for (CIFAR-10, PAPER_TABLE_II_PROTOCOLS). `dataset_name`
names a data set in titles: the user's own images by their folder or list file.
"""
import csv
import io
import json
import os

from data_prep.outputs import atomic_file, write_text
from tools.pipeline import caffe_log

# The TQN paper's Table II (CIFAR-10 mAP at 12 / 24 / 48 bits; its own protocol and nets).
PAPER_TABLE_II = {
    "ITQ": (0.165, 0.196, 0.218), "MLH": (0.184, 0.199, 0.209), "BRE": (0.159, 0.163, 0.172),
    "KSH": (0.295, 0.372, 0.417), "CNNH": (0.465, 0.521, 0.532), "DNNH": (0.555, 0.566, 0.581),
    "DSH": (0.615, 0.651, 0.676), "TQN (paper)": (0.855, 0.857, 0.859),
}
PAPER_TABLE_II_DATASET = "cifar10"
# The protocols the figures are comparable with: the paper's own (5,000 / 1,000 a class drawn
# from the pooled 60,000), and the official 50,000 / 10,000 split the replication uses with
# DSH's and the cifar10-2 database (same sizes; the README's comparison). Never beside
# cifar10-1 (5,000 training images), the held-out study, or another data set.
PAPER_TABLE_II_PROTOCOLS = ("paper", "dsh", "cifar10-2")
ROW_KEYS = ("method", "features", "bits", "map_tie_aware", "map_index_order", "precision_radius2",
            "real_map", "protocol", "net", "iterations", "seeds", "wall_seconds", "source",
            "warnings", "code_health")
HEALTH_KEYS = ("distinct_codes", "mean_entropy", "top1_share")


# ---------------------------------------------------------------------------------------------
# Rows

def model_row(method, bits, result, protocol, net, iterations, seeds, wall_seconds, features=None):
    """A table row of a trained model from its evaluation (tools.pipeline.evaluation)."""
    b = result["binary"]
    return dict(method=method, features=features or ("learned (PQ, ADC)" if result.get("method") == "dqn"
                                                     else "learned"),
                bits=bits, map_tie_aware=b["map_tie_aware"], map_index_order=b["map_index_order"],
                precision_radius2=b.get("precision_radius2"), real_map=result["real"]["map"],
                protocol=protocol, net=net, iterations=iterations, seeds=seeds,
                wall_seconds=wall_seconds, source="measured", warnings=len(result["collapse_warnings"]),
                code_health=json.dumps({k: result["code_health"][k] for k in HEALTH_KEYS
                                        if k in result["code_health"]}))


def baseline_row(method, bits, metrics, info, protocol, features, net, seed):
    """A table row of a classical baseline (evaluation.evaluate_baseline's metrics and info)."""
    return dict(method=method.upper(), features=features, bits=bits,
                map_tie_aware=metrics["map_tie_aware"], map_index_order=metrics["map_index_order"],
                precision_radius2=metrics["precision_radius2"], real_map=None, protocol=protocol,
                net=net, iterations=str(info.get("iterations", "")), seeds=f"hashing {seed}",
                wall_seconds=info.get("wall_seconds"), source="measured", warnings=0, code_health="")


def seed_mean_rows(rows):
    """Rows of one (method, features, bits, protocol, source) at several seeds -> one row each:
    the mean of every figure with its sample standard deviation (map_sd, real_map_sd; ddof 1),
    the seeds listed, warnings summed, wall seconds averaged. One seed: its row, sd None."""
    import numpy as np
    groups = {}
    for r in rows:
        groups.setdefault((r["method"], r["features"], r["bits"], r["protocol"], r["source"]), []).append(r)
    out = []
    for group in groups.values():
        row = dict(group[0])

        def stats(key):
            values = [g[key] for g in group if g.get(key) is not None]
            return _mean_sd(values) if values else (None, None)
        row["map_tie_aware"], row["map_sd"] = stats("map_tie_aware")
        row["map_index_order"], _ = stats("map_index_order")
        row["precision_radius2"], _ = stats("precision_radius2")
        row["real_map"], row["real_map_sd"] = stats("real_map")
        row["seeds"] = "; ".join(str(g["seeds"]) for g in group)
        row["seed_count"] = len(group)
        row["seed_values"] = [g["map_tie_aware"] for g in group]
        row["warnings"] = sum(g["warnings"] for g in group)
        walls = [g["wall_seconds"] for g in group if g.get("wall_seconds") is not None]
        row["wall_seconds"] = round(float(np.mean(walls)), 1) if walls else None
        out.append(row)
    return out


def _with_sd(value, sd):
    return f"{value:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def dataset_name(manifest):
    """A data set's name in titles and tables: its configuration name, and for the user's own
    images (`images`) that with the folder or list file they came from, e.g. "images: flowers";
    another data set repacked into CIFAR-10's layout by its archive, "cifar10 layout: x.tar.gz"."""
    name = manifest.get("dataset")
    source = str(manifest.get("source") or "").rstrip("/\\")
    if name == "images":
        return f"images: {os.path.basename(source) or source}"
    if manifest.get("repacked"):
        return f"{name} layout: {os.path.basename(source) or source}"
    return name


def paper_dataset(manifest):
    """The data set the paper's figures were reported for: the manifest's, unless it is another
    data set repacked into that one's archive layout (then None: no cited rows beside it)."""
    return None if manifest.get("repacked") else manifest.get("dataset")


def cited_rows(bits_list, dataset, protocol):
    """The paper's Table II figures at `bits_list`, marked cited; none for another data set or a
    protocol they are not comparable with (PAPER_TABLE_II_PROTOCOLS)."""
    if dataset != PAPER_TABLE_II_DATASET or protocol not in PAPER_TABLE_II_PROTOCOLS:
        return []
    rows = []
    for method, values in PAPER_TABLE_II.items():
        for bits, value in zip((12, 24, 48), values):
            if bits in bits_list:
                rows.append(dict(method=method, features="(paper)", bits=bits, map_tie_aware=value,
                                 map_index_order=None, precision_radius2=None, real_map=None,
                                 protocol="the paper's (5,000/1,000 per class)", net="(paper)",
                                 iterations="", seeds="", wall_seconds=None,
                                 source="cited: TQN paper, Table II", warnings=0, code_health=""))
    return rows


# ---------------------------------------------------------------------------------------------
# Tables

def method_table(rows, bits_list, title):
    """Markdown of a Table II-style table: a row per (method, features, source), a column per
    width; then P@r<=2, protocol, net, iterations, seeds and wall time of each measured row, and
    the real-valued mAP of the rows that have one."""
    methods = list(dict.fromkeys((r["method"], r["features"], r["source"]) for r in rows))
    lines = [f"# {title}", "", "| method | features | " + " | ".join(f"{b} bits" for b in bits_list)
             + " | source |", "|---|---|" + "---|" * len(bits_list) + "---|"]
    for method, features, source in methods:
        cells = []
        for b in bits_list:
            r = next((r for r in rows if (r["method"], r["features"], r["source"]) == (method, features, source)
                      and r["bits"] == b), None)
            if r is None:
                cells.append("–")
            elif r["map_index_order"] is None:
                cells.append(_with_sd(r["map_tie_aware"], r.get("map_sd")))
            else:
                cells.append(f"{_with_sd(r['map_tie_aware'], r.get('map_sd'))} [{r['map_index_order']:.3f}]"
                             + (" ⚠" if r["warnings"] else ""))
        lines.append(f"| {method} | {features} | " + " | ".join(cells) + f" | {source} |")
    lines += ["", "mAP over the full Hamming ranking: tie-aware (expectation over random order within "
              "ties) [ties broken by database index]; ⚠: the codes' health check warned (collapse)."]
    if any(r["source"] != "measured" for r in rows):
        lines.append("Cited rows are the paper's own figures under its protocol and nets, not comparable "
                     "one to one.")
    lines += ["", "| method | bits | P@r≤2 | protocol | net | iterations | seeds | wall s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["source"] == "measured":
            p2 = "n/a" if r["precision_radius2"] is None else f"{r['precision_radius2']:.3f}"
            lines.append(f"| {r['method']} ({r['features']}) | {r['bits']} | {p2} | "
                         f"{r['protocol']} | {r['net']} | {r['iterations']} | {r['seeds']} | "
                         f"{r['wall_seconds']} |")
    real = [r for r in rows if r.get("real_map") is not None]
    if real:
        lines += ["", "| real-valued mAP (Euclidean) | " + " | ".join(f"{b} bits" for b in bits_list) + " |",
                  "|---|" + "---|" * len(bits_list)]
        for name in dict.fromkeys(r["method"] for r in real):
            cells = [next((_with_sd(r["real_map"], r.get("real_map_sd")) for r in real
                           if r["method"] == name and r["bits"] == b), "–")
                     for b in bits_list]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def headline(result, dataset):
    """The Table III metric: top-20 accuracy on In-shop (the paper's), mAP elsewhere:
    (RF value, BC tie-aware value, BC index-order value, metric name)."""
    if dataset == "inshop":
        return (result["real"]["top20"], result["binary"]["top20_tie_aware"],
                result["binary"]["top20_index_order"], "top-20 accuracy")
    return (result["real"]["map"], result["binary"]["map_tie_aware"],
            result["binary"]["map_index_order"], "mAP")


def _mean_sd(values):
    """(mean, sample sd with ddof 1, or None for one value) of a list of floats."""
    import numpy as np
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def table3(results, bits_list, dataset, protocol, tqn_label="TQN", name=None):
    """Markdown and CSV rows of RF/BC x triplet/TQN, drops relative to RF with triplet;
    results: {bits: {1: step-1 evaluation, 2: step-2 evaluation}}, or lists of evaluations, one a
    seed, in the same seed order for both steps: then every cell is the seeds' mean ± sd (ddof 1),
    each seed's change taken against its own RF with triplet; `name` titles the data set
    (default: `dataset`)."""
    def seeds(e):
        return e if isinstance(e, (list, tuple)) else [e]
    first = seeds(results[bits_list[0]][1])[0]
    metric = headline(first, dataset)[3]
    rows = []
    for label, step, kind in (("RF with triplet", 1, "rf"), ("BC with triplet", 1, "bc"),
                              (f"RF with {tqn_label}", 2, "rf"), (f"BC with {tqn_label}", 2, "bc")):
        cells = []
        for bits in bits_list:
            step1, this = seeds(results[bits][1]), seeds(results[bits][step])
            if len(step1) != len(this):
                raise ValueError(f"table3: {bits} bits has {len(step1)} step-1 and {len(this)} step-2 "
                                 f"evaluations; they must be the same seeds")
            values, drops, index = [], [], []
            for e1, e in zip(step1, this):
                rf1 = headline(e1, dataset)[0]
                rf, bc, bc_index, _ = headline(e, dataset)
                values.append(rf if kind == "rf" else bc)
                index.append(bc_index)
                drops.append((rf1 - values[-1]) / rf1 if rf1 > 0 else float("nan"))
            value, value_sd = _mean_sd(values)
            drop, drop_sd = _mean_sd(drops)
            plain = (step, kind) == (1, "rf")
            cells.append(dict(bits=bits, value=value, value_sd=value_sd, seeds=len(values),
                              index_order=None if kind == "rf" else _mean_sd(index)[0],
                              drop=None if plain else drop, drop_sd=None if plain else drop_sd))
        rows.append((label, cells))
    head = "| " + f"{metric} ({name or dataset}, protocol {protocol})" + " | " + " | ".join(
        f"{b} bits" for b in bits_list) + " |"
    md = [head, "|---" * (len(bits_list) + 1) + "|"]
    for label, cells in rows:
        out = []
        for c in cells:
            text = f"{c['value']:.3f}" + (f" ± {c['value_sd']:.3f}" if c["value_sd"] is not None else "")
            if c["drop"] is not None:
                text += f" ({-c['drop']:+.2%}" + (f" ± {c['drop_sd']:.2%}" if c["drop_sd"] is not None else "") + ")"
            if c["index_order"] is not None:
                text += f" [index order {c['index_order']:.3f}]"
            out.append(text)
        md.append(f"| {label} | " + " | ".join(out) + " |")
    md.append("")
    count = rows[0][1][0]["seeds"]
    md.append(f"BC: tie-aware {metric} (expectation over random order within Hamming ties); "
              f"[index order]: ties broken by database index. In parentheses: change relative "
              f"to RF with triplet, as in the paper's Table III."
              + (f" Mean ± sample sd over {count} seeds (each seed's change against its own RF "
                 f"with triplet)." if count > 1 else ""))
    csv_rows = [dict(row=label, bits=c["bits"], value=c["value"], value_sd=c["value_sd"], seeds=c["seeds"],
                     index_order=c["index_order"],
                     change_vs_rf_triplet=None if c["drop"] is None else -c["drop"],
                     change_sd=c["drop_sd"], metric=metric, dataset=name or dataset, protocol=protocol)
                for label, cells in rows for c in cells]
    return "\n".join(md), csv_rows


# ---------------------------------------------------------------------------------------------
# Files

def write_csv(path, rows):
    """Rows (dicts with the same keys) as a CSV file, atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def write_table(path_md, markdown, rows):
    """A table as markdown (path_md) and its rows as CSV beside it (.csv)."""
    write_text(path_md, markdown)
    write_csv(path_md[:-3] + ".csv", rows)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# Plots

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    plt = _pyplot()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def plot_curves(panels, path, title):
    """panels: [(panel title, {label: [(iteration, value), ...]}), ...] -> one PNG, a panel each;
    points (iteration, mean, sd) draw the mean with a band of ± sd."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4),
                             squeeze=False)
    for ax, (panel_title, curves) in zip(axes[0], panels):
        for label, points in curves.items():
            if points:
                xs, ys = list(zip(*points))[:2]
                line, = ax.plot(xs, ys, label=label)
                if len(points[0]) == 3:
                    sds = [p[2] for p in points]
                    ax.fill_between(xs, [y - d for y, d in zip(ys, sds)], [y + d for y, d in zip(ys, sds)],
                                    color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(panel_title)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def seed_curve(curves):
    """Curves [(iteration, value), ...] of several seeds -> [(iteration, mean, sd)] at the
    iterations every seed logged (sd ddof 1); one seed: its points with sd 0."""
    common = set.intersection(*(set(i for i, _ in c) for c in curves)) if curves else set()
    by_seed = [dict(c) for c in curves]
    out = []
    for it in sorted(common):
        mean, sd = _mean_sd([b[it] for b in by_seed])
        out.append((it, mean, sd or 0.0))
    return out


def plot_losses(runs, results_dir, title):
    """Fig. 1-2 of the paper from TQN run folders {bits: run, or [run of each seed]}: both steps'
    loss curves, each step's trained loss with the other monitored (weight 0); several seeds: the
    mean curve with a band of ± sd."""
    fig1, fig2 = [], []
    names = ("triplet_loss", "tqn_loss", "tqn_loss_s", "tqn_loss_d")
    for bits, run in runs.items():
        seeds = run if isinstance(run, (list, tuple)) else [run]
        for step, panels in ((1, fig1), (2, fig2)):
            logs = [caffe_log.step_log(r, step) for r in seeds]
            logs = [log for log in logs if os.path.exists(log)]
            if not logs:
                continue
            parsed = [caffe_log.parse_file(log) for log in logs]
            if len(parsed) == 1:
                curves = {name: parsed[0].get(name, []) for name in names}
            else:
                curves = {name: seed_curve([p.get(name, []) for p in parsed]) for name in names}
            panels.append((f"{bits} bits" + (f" ({len(parsed)} seeds, mean ± sd)" if len(parsed) > 1 else ""),
                           curves))
    plot_curves(fig1, os.path.join(results_dir, "fig1_step1_losses.png"),
                f"{title}: step 1 (triplet loss trained; TQN loss monitored)")
    plot_curves(fig2, os.path.join(results_dir, "fig2_step2_losses.png"),
                f"{title}: step 2 (TQN loss trained; triplet loss monitored)")


def plot_pr_curve(result, path):
    """The PR curve by Hamming radius of one evaluation."""
    plt = _pyplot()
    pr = result["pr_by_radius"]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(pr["recall"], pr["precision"], marker=".")
    for r in (0, 2, 4):
        if r < len(pr["recall"]):
            ax.annotate(f"r={r}", (pr["recall"][r], pr["precision"][r]), fontsize=7)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (empty ball = 0)")
    ax.set_title(f"{result['dataset']} {result['bits']} bits, protocol {result['protocol']}\n"
                 f"Hamming ball of radius r", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_pr_curves(results, path, title):
    """PR curves by radius of triplet (step 1) and TQN (step 2), a panel per width;
    results: {bits: {1: evaluation, 2: evaluation}}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False)
    for ax, (bits, by_step) in zip(axes[0], sorted(results.items())):
        for step, label in ((1, "triplet"), (2, "TQN")):
            pr = by_step[step]["pr_by_radius"]
            ax.plot(pr["recall"], pr["precision"], marker=".", label=label)
        ax.set_title(f"{bits} bits")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision within Hamming radius")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
