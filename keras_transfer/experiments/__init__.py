"""Command lines: `python -m keras_transfer.experiments.<name>`.

Each module parses its flags into a config dataclass and calls `run(config)`.
"""

import os

# Quiet TensorFlow's C++ start-up chatter on the command line (before TF loads).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
