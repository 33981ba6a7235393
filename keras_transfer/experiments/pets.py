"""Oxford-IIIT Pet: transfer learning on 37 cat and dog breeds.

    python -m keras_transfer.experiments.pets [--data-dir PATH] [options]

Without `--data-dir` the data comes from tensorflow-datasets
(`oxford_iiit_pet`: its train split gives train and validation, its test split
the test metrics). With it, a manually downloaded copy: `images/` and
optionally `annotations/` (`trainval.txt`, `test.txt`). `--target species`
classifies cat vs dog instead of breeds. Run with `--help` for every option.
"""

from __future__ import annotations

import sys

from keras_transfer import data as data_lib
from keras_transfer.experiments import _common


def load(config: _common.ExperimentConfig) -> data_lib.ImageData:
    return data_lib.load_oxford_pets(
        config.data.data_dir,
        image_size=config.image_size,
        val_split=config.data.val_split,
        seed=config.train.seed,
        resize=config.data.resize,
        cache=config.data.cache,
        tfds_data_dir=config.data.tfds_data_dir,
        target=config.data.target,
    )


COMMAND = _common.TrainingCommand(
    dataset="pets",
    description="Two-phase transfer learning (head on a frozen backbone, then fine-tuning) on the "
                "Oxford-IIIT Pet dataset.",
    data_dir_help="manually downloaded Oxford-IIIT Pet folder with images/ and optionally annotations/ "
                  "(default: tensorflow-datasets)",
    load=load,
    data_flags_skipped=(),
)
build_parser = COMMAND.build_parser
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
