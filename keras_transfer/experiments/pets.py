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
from collections.abc import Sequence

from keras_transfer import data as data_lib
from keras_transfer import training
from keras_transfer.experiments import _common

DATASET = "pets"


def build_parser():
    return _common.build_parser(
        prog="python -m keras_transfer.experiments.pets",
        description="Two-phase transfer learning (head on a frozen backbone, then fine-tuning) on the "
                    "Oxford-IIIT Pet dataset.",
        dataset=DATASET,
        data_dir_help="manually downloaded Oxford-IIIT Pet folder with images/ and optionally annotations/ "
                      "(default: tensorflow-datasets)",
        data_dir_required=False,
        tfds=True,
        pets_target=True,
    )


def load(config: _common.ExperimentConfig) -> data_lib.ImageData:
    return data_lib.load_oxford_pets(
        config.data.data_dir,
        image_size=config.image_size,
        val_split=config.data.val_split,
        seed=config.train.seed,
        resize=config.data.resize,
        cache=config.data.loader_cache(),
        tfds_data_dir=config.data.tfds_data_dir,
        target=config.data.target,
    )


def run(config: _common.ExperimentConfig) -> training.TrainResult:
    """Trains on Oxford-IIIT Pet and writes every output into `config.output_dir`."""
    return _common.run_experiment(config, load)


def main(argv: Sequence[str] | None = None) -> int:
    return _common.main(argv, parser=build_parser(), dataset=DATASET, run=run)


if __name__ == "__main__":
    sys.exit(main())
