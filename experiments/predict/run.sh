#!/usr/bin/env bash
# Predict on photos a run never saw: cats vs dogs trained on cat/dog 1-400, scored on 401-500.
# From the project root, with KERAS_HOME set up as in the README.
set -euo pipefail
SRC=../shared/data/cats_vs_dogs/train
OUT=${OUT:-runs/heldout}
mkdir -p "$OUT"/data/{train,test}/{cats,dogs}
for c in cat dog; do
  for i in $(seq 1 500); do
    if [ "$i" -le 400 ]; then part=train; else part=test; fi
    ln -sf "$PWD/$SRC/${c}s/$c.$i.jpg" "$OUT/data/$part/${c}s/$c.$i.jpg"
  done
done
printf 'not a jpeg' > "$OUT/data/test/cats/broken.jpg"   # an undecodable file: listed, not fatal
python -m keras_transfer.experiments.folder --data-dir "$OUT/data/train" --verbose 2 --output-dir "$OUT/run"
python -m keras_transfer.experiments.predict --model "$OUT/run/model.keras" --images "$OUT/data/test" \
    --labels-from-folders --output "$OUT/predictions.csv"
# The independent check: the same decoded images through model.predict.
python - "$OUT" <<'PY'
import sys
import numpy as np
import keras_transfer as kt
out = sys.argv[1]
data = kt.load_folder(f"{out}/data/test", image_size=224, val_split=0.0, seed=0)
model = kt.load_model(f"{out}/run/model.keras")
x = np.stack([a for a, _ in data.train.as_numpy_iterator()])
y = np.array([b for _, b in data.train.as_numpy_iterator()])
print("independent model.predict accuracy", float((model.predict(x, verbose=0).argmax(1) == y).mean()), len(y))
PY
