"""Why the phase-1 head and the linear probe differ by a few images on pets.

Both minimize mean cross-entropy + ||W||^2 / (2 n) on standardized features
(the head through the package's model, the probe through scikit-learn).
For each split seed this extracts the pooled MobileNetV2 features of the
Oxford pets photos once, fits the probe, then fits the package's head on the
same cached features with the default optimizer (Adam 1e-3, 100 epochs, batch
32) and with a cosine-decayed Adam 1e-2 that drives the objective to its
minimum, and prints for each: validation accuracy, agreement with the probe's
validation predictions, and the objective value reached.

    python experiments/transfer_learning/head_vs_probe.py [--seeds 0 1 2 3 4]

Needs KERAS_HOME with the MobileNetV2 weights and ../shared/data.
"""

import argparse
import os

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from keras_transfer import data as data_lib
from keras_transfer import evaluation, models, phases

HERE = os.path.dirname(os.path.abspath(__file__))
PETS = os.path.join(HERE, "..", "..", "..", "shared", "data", "oxford_pets")


def objective(kernel, bias, features, labels):
    logits = features @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels].mean() + (kernel**2).sum() / (2 * len(labels))


def fit_head(train_x, train_y, val_x, *, num_classes, learning_rate, cosine, seed):
    keras.utils.set_random_seed(seed)
    # train()'s defaults: head_l2 = 1 on scikit-learn's 1/C scale, no dropout.
    model = models.build_classifier("mobilenet_v2", num_classes=num_classes, image_size=224, weights=None,
                                    kernel_l2=1.0 / (2 * len(train_y)))
    epochs, batch = 100, 32
    if cosine:
        # A schedule is not a phase option: fit the shared head directly with it.
        models.set_feature_statistics(model, train_x)
        head = models.head(model)
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * -(-len(train_y) // batch))
        head.compile(optimizer=keras.optimizers.Adam(rate),
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        batches = phases.feature_batches(train_x, train_y, batch_size=batch, shuffle=True, seed=seed)
        head.fit(batches.epochs(0, epochs), steps_per_epoch=batches.steps, epochs=epochs, verbose=0)
    else:
        phases.fit_head_on_features(model, train_x, train_y, epochs=epochs, learning_rate=learning_rate,
                                    batch_size=batch, seed=seed)
        head = models.head(model)
    kernel, bias = (np.asarray(w) for w in model.get_layer(models.LOGITS_NAME).get_weights())
    # The head's objective in its own feature space: the model's standardization of train_x.
    standardized = np.asarray(model.get_layer(models.STANDARDIZATION_NAME)(train_x))
    return head.predict(val_x, verbose=0).argmax(axis=1), objective(kernel, bias, standardized, train_y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        data = data_lib.load_oxford_pets(PETS, image_size=224, seed=seed)
        model = models.build_classifier("mobilenet_v2", num_classes=len(data.class_names), image_size=224)
        train_x = phases.extract_features(model, data.train, batch_size=32)
        val_x = phases.extract_features(model, data.val, batch_size=32)
        train_y, val_y = evaluation.labels_of(data.train), evaluation.labels_of(data.val)
        scaler = StandardScaler().fit(train_x)
        scaled = scaler.transform(train_x)
        probe = LogisticRegression(C=1.0, max_iter=3000).fit(scaled, train_y)
        probe_pred = probe.predict(scaler.transform(val_x))
        row = {"seed": seed, "probe": (np.mean(probe_pred == val_y), 1.0,
                                       objective(probe.coef_.T, probe.intercept_, scaled, train_y))}
        for name, rate, cosine in (("head, Adam 1e-3 (default)", 1e-3, False), ("head, Adam 1e-2 cosine", 1e-2, True)):
            pred, value = fit_head(train_x, train_y, val_x, num_classes=len(data.class_names),
                                   learning_rate=rate, cosine=cosine, seed=seed)
            row[name] = (np.mean(pred == val_y), np.mean(pred == probe_pred), value)
        rows.append(row)
        for name, (accuracy, agree, value) in ((k, v) for k, v in row.items() if k != "seed"):
            print(f"seed {seed} {name:28s} val acc {accuracy:.4f}  agrees with probe {agree:.4f}  objective {value:.5f}",
                  flush=True)
        keras.backend.clear_session()
    print()
    for name in [k for k in rows[0] if k != "seed"]:
        print(f"mean over {len(rows)} splits, {name:28s} val acc {np.mean([r[name][0] for r in rows]):.4f}  "
              f"agreement {np.mean([r[name][1] for r in rows]):.4f}  objective {np.mean([r[name][2] for r in rows]):.5f}")


if __name__ == "__main__":
    main()
