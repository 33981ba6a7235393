"""Prints the faithfulness tables of faithfulness.md from the result.json files of run.sh.

    python experiments/explain/table.py experiments/explain/imagenet_mobilenet/result.json ...
"""

from __future__ import annotations

import json
import sys


def table(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    lines = [f"{result['model']}: N = {result['num_images']} photos, layer {result['layer']}", ""]
    patches = list(result["faithfulness"])
    header = "| method |" + "".join(f" deletion AUC ↓ ({p.replace('_', ' ')} px) | insertion AUC ↑ ({p.replace('_', ' ')} px) |"
                                    for p in patches)
    lines += [header, "|---|" + "---:|---:|" * len(patches)]
    for name in result["faithfulness"][patches[0]]["auc"]:
        row = f"| {name} |"
        for patch in patches:
            cell = result["faithfulness"][patch]["auc"][name]
            row += (f" {cell['deletion_auc']:.4f} ± {cell['deletion_auc_sem']:.4f} |"
                    f" {cell['insertion_auc']:.4f} ± {cell['insertion_auc_sem']:.4f} |")
        lines.append(row)
    lines.append("")
    for patch in patches:
        best = result["faithfulness"][patch]
        lines.append(f"- {patch.replace('_', ' ')} px: lowest deletion AUC {best['lowest_deletion']}, "
                     f"highest insertion AUC {best['highest_insertion']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(path) for path in sys.argv[1:]))
