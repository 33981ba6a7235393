"""Prints the tables of README.md from the runs of run.sh.

    python experiments/transfer_learning/summarize.py [RUNS]   # default: runs/
"""

import json
import os
import statistics
import sys


def load(runs: str, name: str) -> dict | None:
    path = os.path.join(runs, name, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def main() -> None:
    runs = sys.argv[1] if len(sys.argv) > 1 else "runs"
    print("| run | train / val images | phase 1 (head) val acc | after fine-tuning | linear probe | wall time |")
    print("|---|---|---|---|---|---|")
    for name in ("pets", "pets_no_augment", "cats_vs_dogs", "cats_vs_dogs_no_augment"):
        m = load(runs, name)
        if m is None:
            continue
        used = m["data"]["used"]
        head = m["phases"]["head"]
        print(f"| `{name}` | {used['train']} / {used['val']} | {head['final']['val']['accuracy']:.3f} "
              f"| {m['final']['val']['accuracy']:.3f} | {m['linear_probe']['val_accuracy']:.3f} "
              f"| {m['wall_time_s']:.0f} s (features {head['feature_extraction_s']:.0f} s, "
              f"head {head['wall_time_s']:.0f} s, fine-tuning {m['phases']['fine_tune']['wall_time_s']:.0f} s) |")
    print()
    print("| data set | split seed | phase 1 (head) val acc | linear probe | head - probe (images) |")
    print("|---|---|---|---|---|")
    for dataset in ("pets", "cats_vs_dogs"):
        heads, probes = [], []
        for seed in range(5):
            m = load(runs, dataset if seed == 0 else f"{dataset}_seed{seed}")
            if m is None:
                continue
            n = m["data"]["used"]["val"]
            head = m["phases"]["head"]["final"]["val"]["accuracy"]
            probe = m["linear_probe"]["val_accuracy"]
            heads.append(head)
            probes.append(probe)
            print(f"| {dataset} | {seed} | {head:.3f} | {probe:.3f} | {round((head - probe) * n):+d} of {n} |")
        if len(heads) > 1:
            diffs = [100 * (h - p) for h, p in zip(heads, probes)]
            print(f"| **{dataset}, mean of {len(heads)}** | | **{statistics.mean(heads):.3f}** "
                  f"| **{statistics.mean(probes):.3f}** | {statistics.mean(diffs):+.2f} points "
                  f"(standard error {statistics.stdev(diffs) / len(diffs) ** 0.5:.2f}) |")

    print()
    print("| split seed | phase 1 (head) | after 10 fine-tuning epochs | linear probe |")
    print("|---|---|---|---|")
    rows = []
    for seed in range(5):
        m = load(runs, f"pets_default_seed{seed}")
        if m is None:
            continue
        row = (m["phases"]["head"]["final"]["val"]["accuracy"], m["final"]["val"]["accuracy"],
               m["linear_probe"]["val_accuracy"])
        rows.append(row)
        print(f"| {seed} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.3f} |")
    if rows:
        means = [statistics.mean(r[k] for r in rows) for k in range(3)]
        print(f"| **mean of {len(rows)}** | **{means[0]:.3f}** | **{means[1]:.3f}** | **{means[2]:.3f}** |")


if __name__ == "__main__":
    main()
