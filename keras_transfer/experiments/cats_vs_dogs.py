"""Cats vs Dogs, the lesson's data set: transfer learning on two classes.

    python -m keras_transfer.experiments.cats_vs_dogs [--data-dir PATH] [options]

Without `--data-dir` the data comes from tensorflow-datasets (`cats_vs_dogs`);
with it, a class-per-folder copy (e.g. Kaggle's `PetImages/` with `Cat/` and
`Dog/`). Run with `--help` for every option.
"""

from __future__ import annotations

import sys

from keras_transfer import data as data_lib
from keras_transfer.experiments import _common


def load(config: _common.ExperimentConfig) -> data_lib.ImageData:
    return data_lib.load_cats_vs_dogs(
        config.data.data_dir,
        image_size=config.image_size,
        val_split=config.data.val_split,
        seed=config.train.seed,
        resize=config.data.resize,
        cache=config.data.cache,
        tfds_data_dir=config.data.tfds_data_dir,
    )


COMMAND = _common.TrainingCommand(
    dataset="cats_vs_dogs",
    description="Two-phase transfer learning (head on a frozen backbone, then fine-tuning) on Cats vs Dogs.",
    data_dir_help="class-per-folder copy of the data, e.g. Kaggle's PetImages/ (default: tensorflow-datasets)",
    load=load,
)
build_parser = COMMAND.build_parser
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
