"""Transfer learning on any class-per-folder image tree.

    python -m keras_transfer.experiments.folder --data-dir PATH [options]

`PATH/<class>/<image>`: class names are the sorted subfolder names; images
that cannot be decoded are skipped and listed in metrics.json. Run with
`--help` for every option.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from keras_transfer import data as data_lib
from keras_transfer import training
from keras_transfer.experiments import _common

DATASET = "folder"


def build_parser():
    return _common.build_parser(
        prog="python -m keras_transfer.experiments.folder",
        description="Two-phase transfer learning (head on a frozen backbone, then fine-tuning) on a "
                    "class-per-folder image tree.",
        dataset=DATASET,
        data_dir_help="root folder with one subfolder of images per class (required)",
        data_dir_required=True,
        tfds=False,
    )


def load(config: _common.ExperimentConfig) -> data_lib.ImageData:
    return data_lib.load_folder(
        config.data.data_dir,
        image_size=config.image_size,
        val_split=config.data.val_split,
        seed=config.train.seed,
        resize=config.data.resize,
        cache=config.data.loader_cache(),
    )


def run(config: _common.ExperimentConfig) -> training.TrainResult:
    """Trains on `config.data.data_dir` and writes every output into `config.output_dir`."""
    return _common.run_experiment(config, load)


def main(argv: Sequence[str] | None = None) -> int:
    return _common.main(argv, parser=build_parser(), dataset=DATASET, run=run)


if __name__ == "__main__":
    sys.exit(main())
