"""Transfer learning on any class-per-folder image tree.

    python -m keras_transfer.experiments.folder --data-dir PATH [options]

`PATH/<class>/<image>`: class names are the sorted subfolder names; images
that cannot be decoded are skipped and listed in metrics.json. Run with
`--help` for every option.
"""

from __future__ import annotations

import sys

from keras_transfer import data as data_lib
from keras_transfer.experiments import _common


def load(config: _common.ExperimentConfig) -> data_lib.ImageData:
    return data_lib.load_folder(
        config.data.data_dir,
        image_size=config.image_size,
        val_split=config.data.val_split,
        seed=config.train.seed,
        resize=config.data.resize,
        cache=config.data.cache,
    )


COMMAND = _common.TrainingCommand(
    dataset="folder",
    description="Two-phase transfer learning (head on a frozen backbone, then fine-tuning) on a "
                "class-per-folder image tree.",
    data_dir_help="root folder with one subfolder of images per class (required)",
    load=load,
    tfds=False,
)
build_parser = COMMAND.build_parser
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
