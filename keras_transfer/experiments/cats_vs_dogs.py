"""Cats vs Dogs: transfer learning on the Kaggle/Asirra photos.

    python -m keras_transfer.experiments.cats_vs_dogs [--data-dir PATH] [options]

Without `--data-dir` the data comes from tensorflow-datasets (`cats_vs_dogs`,
downloaded on first use); with it, a class-per-folder copy such as Kaggle's
`PetImages/` (`Cat/`, `Dog/`), whose undecodable files are skipped and listed
in metrics.json. Run with `--help` for every option.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from keras_transfer import data as data_lib
from keras_transfer import training
from keras_transfer.experiments import _common

DATASET = "cats_vs_dogs"


def build_parser():
    return _common.build_parser(
        prog="python -m keras_transfer.experiments.cats_vs_dogs",
        description="Two-phase transfer learning (head on a frozen backbone, then fine-tuning) on Cats vs Dogs.",
        dataset=DATASET,
        data_dir_help="class-per-folder copy of the data, e.g. Kaggle's PetImages/ (default: tensorflow-datasets)",
        data_dir_required=False,
        tfds=True,
    )


def load(config: _common.ExperimentConfig) -> data_lib.ImageData:
    return data_lib.load_cats_vs_dogs(
        config.data.data_dir,
        image_size=config.image_size,
        val_split=config.data.val_split,
        seed=config.train.seed,
        resize=config.data.resize,
        cache=config.data.loader_cache(),
        tfds_data_dir=config.data.tfds_data_dir,
    )


def run(config: _common.ExperimentConfig) -> training.TrainResult:
    """Trains on Cats vs Dogs and writes every output into `config.output_dir`."""
    return _common.run_experiment(config, load)


def main(argv: Sequence[str] | None = None) -> int:
    return _common.main(argv, parser=build_parser(), dataset=DATASET, run=run)


if __name__ == "__main__":
    sys.exit(main())
