"""The main job's five-split results beside the linear probe, from the runs' own metrics.json.

Reads run folders named PREFIX_seed0 ... PREFIX_seed4 (written by the commands in
README.md), prints one markdown table per task (accuracy, flip-averaged accuracy,
probe, phase 1's head, phase 2's epochs and the epoch it ended on, wall time;
mean, standard error, and the paired gap to the probe with its standard error),
writes the numbers as JSON and draws the validation curves of phase 2 per split,
starting from the head's accuracy, beside the probe's.

    python experiments/beyond_probe/main_job.py --task pets=runs/pets_default --task cats_vs_dogs=runs/cvd_default \\
        --json experiments/beyond_probe/main_job_defaults.json --figure experiments/beyond_probe/main_job_curves.png
"""

from __future__ import annotations

import argparse
import json
import os

SEEDS = range(5)


def load_runs(prefix: str) -> list[dict]:
    runs = []
    for seed in SEEDS:
        with open(os.path.join(f"{prefix}_seed{seed}", "metrics.json")) as f:
            metrics = json.load(f)
        fine = metrics["phases"].get("fine_tune", {})
        runs.append({
            "seed": seed,
            "val_images": metrics["data"]["used"]["val"],
            "accuracy": metrics["final"]["val"]["accuracy"],
            "flip_averaged": (metrics.get("final_flip_averaged") or {}).get("val", {}).get("accuracy"),
            "probe": metrics["linear_probe"]["val_accuracy"],
            "head": metrics["phases"]["head"]["final"]["val"]["accuracy"],
            "fine_tune_epochs": fine.get("epochs_done", 0),
            "ended_on_epoch": fine.get("ended_on_epoch", "last"),
            "wall_time_s": metrics["wall_time_s"],
            "tensorboard_images_s": sum(p.get("tensorboard_images_s", 0.0) for p in metrics["phases"].values()),
            "curve": {"epoch": fine.get("history", {}).get("epoch", []),
                      "val_accuracy": fine.get("history", {}).get("val_accuracy", [])},
        })
    return runs


def summarize(runs: list[dict]) -> dict:
    from keras_transfer.evaluation import mean_and_standard_error  # here: reading the runs needs no TensorFlow

    gaps = [100 * (r["accuracy"] - r["probe"]) for r in runs]
    out = {name: dict(zip(("mean", "se"), mean_and_standard_error([r[name] for r in runs])))
           for name in ("accuracy", "probe", "head", "wall_time_s", "tensorboard_images_s")}
    if all(r["flip_averaged"] is not None for r in runs):
        out["flip_averaged"] = dict(zip(("mean", "se"), mean_and_standard_error([r["flip_averaged"] for r in runs])))
    out["gap_points"] = dict(zip(("mean", "se"), mean_and_standard_error(gaps)))
    out["error_ratio"] = (1 - out["accuracy"]["mean"]) / (1 - out["probe"]["mean"])
    return out


def table(task: str, runs: list[dict], summary: dict) -> str:
    def ended(run):
        if run["ended_on_epoch"] is None:
            return "the head"
        return "last" if run["ended_on_epoch"] == "last" else f"epoch {run['ended_on_epoch']}"

    lines = [f"{task}:", "",
             "| split seed | validation accuracy | flip-averaged | linear probe | head (phase 1) "
             "| phase 2 epochs (ended on) | wall time |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        flip = "" if r["flip_averaged"] is None else f"{r['flip_averaged']:.3f}"
        lines.append(f"| {r['seed']} | {r['accuracy']:.3f} | {flip} | {r['probe']:.3f} | {r['head']:.3f} "
                     f"| {r['fine_tune_epochs']} ({ended(r)}) | {r['wall_time_s']:.0f} s |")
    s = summary
    flip = f"{s['flip_averaged']['mean']:.4f}" if "flip_averaged" in s else ""
    lines.append(f"| **mean** | **{s['accuracy']['mean']:.4f}** (s.e. {s['accuracy']['se']:.4f}) | {flip} "
                 f"| {s['probe']['mean']:.4f} ({s['probe']['se']:.4f}) | {s['head']['mean']:.4f} | "
                 f"| {s['wall_time_s']['mean']:.0f} s |")
    lines += ["", f"minus probe: {s['gap_points']['mean']:+.2f} points (s.e. of the paired gap "
                  f"{s['gap_points']['se']:.2f}); error {1 - s['accuracy']['mean']:.4f} vs the probe's "
                  f"{1 - s['probe']['mean']:.4f} ({s['error_ratio']:.2f} of it); TensorBoard pictures "
                  f"{s['tensorboard_images_s']['mean']:.1f} s of {s['wall_time_s']['mean']:.0f} s", ""]
    return "\n".join(lines)


def figure(results: dict[str, list[dict]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (task, runs) in zip(axes[0], results.items()):
        for r, color in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
            epochs = [min(r["curve"]["epoch"], default=1) - 1, *r["curve"]["epoch"]]
            ax.plot([e + 1 for e in epochs], [r["head"], *r["curve"]["val_accuracy"]], "o-", color=color,
                    label=f"split {r['seed']}")
            ax.axhline(r["probe"], color=color, linestyle=":", linewidth=1)
            ended = r["ended_on_epoch"]
            at = epochs.index(ended) if isinstance(ended, int) else (0 if ended is None else len(epochs) - 1)
            ax.plot(epochs[at] + 1, [r["head"], *r["curve"]["val_accuracy"]][at], "s", markersize=12,
                    markerfacecolor="none", color=color)
        ax.set_title(f"{task}: phase 2 after the head")
        ax.set_xlabel("epoch of the run (the first point is the head)")
        ax.set_ylabel("validation accuracy (averaged weights)")
        ax.legend(fontsize=8)
    fig.suptitle("dotted: the probe of the same split; square: the epoch the model keeps (lowest validation loss)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", action="append", required=True, metavar="NAME=PREFIX",
                        help="a task's name and its run folders' prefix (PREFIX_seed0 ... PREFIX_seed4)")
    parser.add_argument("--json", help="write the per-run numbers and the summaries here")
    parser.add_argument("--figure", help="write the phase-2 curves here (PNG)")
    args = parser.parse_args()
    results, summaries = {}, {}
    for item in args.task:
        name, _, prefix = item.partition("=")
        if not prefix:
            parser.error(f"--task takes NAME=PREFIX. Received: {item!r}")
        results[name] = load_runs(prefix)
        summaries[name] = summarize(results[name])
        print(table(name, results[name], summaries[name]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": results, "summaries": summaries}, f, indent=1)
    if args.figure:
        figure(results).savefig(args.figure, dpi=100)


if __name__ == "__main__":
    main()
