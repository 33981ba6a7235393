"""Prints N validation photos of the pets run (one per breed in turn), one path a line.

The pets model in ../runs_after/pets was trained with `--data-dir ../shared/data/oxford_pets`, `val_split=0.2`
and seed 0; `keras_transfer.data.stratified_split` with the same arguments gives its validation images
(every photo decoded, so the pool is the annotated images in name order). Breeds are taken in turn so that
the N photos cover as many breeds as possible.

    python experiments/explain/pets_val_images.py [N] [DATA_DIR]
"""

from __future__ import annotations

import os
import sys

from keras_transfer import data


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    root = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/oxford_pets"
    images_dir = os.path.join(root, "images")
    lists = {"trainval": data._read_annotations(os.path.join(root, "annotations", "trainval.txt"))}
    candidates, ignored = data._oxford_candidates(images_dir)
    trainval = data._oxford_groups(candidates, lists, ignored)["trainval"]
    class_names, label_of = data._oxford_labels(trainval, lists, "breed")
    labels = [label_of[stem] for stem, _, _ in trainval]
    _, val = data.stratified_split(labels, val_split=0.2, seed=0)
    by_class: dict[int, list[str]] = {}
    for position in val:
        by_class.setdefault(labels[position], []).append(trainval[position][2])
    chosen, depth = [], 0
    while len(chosen) < count and any(len(v) > depth for v in by_class.values()):
        chosen += [paths[depth] for _, paths in sorted(by_class.items()) if len(paths) > depth]
        depth += 1
    print("\n".join(chosen[:count]))


if __name__ == "__main__":
    main()
