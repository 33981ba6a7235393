"""Robust accuracy of a classifier on 32 held-out photos: single attacks versus their worst case.

    python experiments/robustness/attacks.py cvd uint8 0.5,1,2 20
    python experiments/robustness/attacks.py cvd float 0.5,1,2 20

`cvd`: the standard cats-vs-dogs model (../runs_after/cats_vs_dogs/model.keras), the first 16 cats and
16 dogs of its validation split, true labels; `imagenet`: the ImageNet MobileNet 0.25 on cat.1-16 and
dog.1-16, labels = its own predictions. Then `uint8` or `float` images, the L-inf budgets, and APGD's
steps. Writes attacks/measure_<model>_<uint8|float>.json beside this script.
"""
import json, os, sys
import numpy as np
import keras_transfer as kt
from keras_transfer import adversarial as adv
from keras_transfer.data import load_folder

which, quantize = sys.argv[1], sys.argv[2] == "uint8"
epsilons = tuple(float(e) for e in sys.argv[3].split(","))
steps_apgd = int(sys.argv[4]) if len(sys.argv) > 4 else 100
if which == "cvd":
    model = kt.load_model("/work/runs_after/cats_vs_dogs/model.keras")
    data = load_folder("/work/shared/data/cats_vs_dogs/train", image_size=224, val_split=0.2, seed=0, resize="crop")
    xs, ys = zip(*data.val.as_numpy_iterator())
    xs, ys = np.stack(xs), np.asarray(ys)
    pick = np.concatenate([np.flatnonzero(ys == c)[:16] for c in (0, 1)])
    x, y = xs[pick], ys[pick]
else:
    from keras_transfer.data import load_image_files
    d = "/work/shared/data/cats_vs_dogs/train"
    paths = [os.path.join(d, "cats", f"cat.{i}.jpg") for i in range(1, 17)] + [os.path.join(d, "dogs", f"dog.{i}.jpg") for i in range(1, 17)]
    x, _, _ = load_image_files(paths, image_size=224, resize="crop")
    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    y = np.argmax(adv.predict_logits(model, x), axis=1)
q = dict(quantize=quantize)
attacks = {
    "PGD-CE-10, 1 start": adv.PGD(eps=1.0, steps=10, **q),
    "PGD-margin-10, 3 starts": adv.PGD(eps=1.0, steps=10, loss="margin", restarts=3, **q),
    f"APGD-CE-{steps_apgd}": adv.APGD(eps=1.0, steps=steps_apgd, **q),
    f"APGD-margin-{steps_apgd}": adv.APGD(eps=1.0, steps=steps_apgd, loss="margin", **q),
}
for a in list(attacks.values()) + list(adv.default_attacks()):  # compile outside the timings
    dataclasses = __import__("dataclasses")
    dataclasses.replace(a, eps=epsilons[-1], quantize=quantize)(model, x[:2], adv.Misclassification(y[:2]), batch_size=32)
rows = {}
for name, a in attacks.items():
    c = adv.robust_accuracy(model, x, y, epsilons=epsilons, attack=a, batch_size=32)
    rows[name] = c
    print(f"{name:28s} acc {c.accuracy} steps {[s[0] for s in zip(*c.gradient_steps)]} {c.seconds:.1f}s clean {c.clean_accuracy}", flush=True)
c = adv.robust_accuracy(model, x, y, epsilons=epsilons, attacks=list(attacks.values()), batch_size=32)
rows["worst case of the 4 (cascade)"] = c
print(f"worst case of 4: acc {c.accuracy} steps {[sum(s) for s in zip(*c.gradient_steps)]} found_by {c.found_by} {c.seconds:.1f}s", flush=True)
d = [dataclasses.replace(a, quantize=quantize) for a in adv.default_attacks()]
c = adv.robust_accuracy(model, x, y, epsilons=epsilons, attacks=d, batch_size=32)
rows["default_attacks() (cascade)"] = c
print(f"default: acc {c.accuracy} steps {[sum(s) for s in zip(*c.gradient_steps)]} found_by {c.found_by} {c.seconds:.1f}s", flush=True)
out = {k: {"accuracy": v.accuracy, "clean": v.clean_accuracy, "gradient_steps": v.gradient_steps, "found_by": v.found_by,
           "seconds": v.seconds, "attacks": v.attacks, "n": v.num_images} for k, v in rows.items()}
json.dump({"model": which, "quantize": quantize, "epsilons": epsilons, "rows": out}, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "attacks", f"measure_{which}_{sys.argv[2]}.json"), "w"), indent=1)
