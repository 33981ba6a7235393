"""Explanations: keras_transfer.explain against tf-keras-vis (Gradcam, GradcamPlusPlus, Saliency).

Same model (MobileNet alpha=0.25 with its real ImageNet weights, 224 px,
logits), same layer (`conv_pw_13_relu`, the last convolutional block's
activation), same real photos (Kaggle cats and dogs), same classes (each
photo's predicted class), same number of SmoothGrad samples and noise level
(0.2 of each image's value range), one batch of all photos per call, in one
process.

Like with like: tf-keras-vis needs a flat model in which the layer is
reachable by name, so it gets the Keras Applications MobileNet that sits
inside our classifier (the very same weights) fed with the preprocessed
photos (x / 127.5 - 1), and ours gets the classifier on [0, 255] pixels. The
gradients differ only by the constant 1/127.5 of the preprocessing, which
the per-image min-max normalization of both removes. tf-keras-vis upsamples
Grad-CAM with `scipy.ndimage.zoom(order=1)` (corners aligned), ours with
`tf.image.resize` (half-pixel centres), so the maps are also compared at the
layer's 7x7 resolution (tf-keras-vis' `expand_cam=False`), where both compute
exactly the same numbers. SmoothGrad draws different noise in each library,
so its maps agree only up to the noise; vanilla gradients (no noise) are
compared too.

Speed: images per second of a whole call on the batch, median of
`--repeats` timed calls after one warm-up call each (which traces our
compiled steps); the two libraries' calls alternate, so that both see the
same load on a shared machine, and the process CPU time is reported beside
the wall time. Correlation: Pearson's r between the two libraries' maps,
per image, then averaged.

XLA (`ExplainConfig(jit_compile=True)`) was slower on this CPU in a trial
(Grad-CAM 21 vs 101 images/s on 8 photos), so it is not timed here.

    python benchmarks/bench_explain.py [--images 32] [--samples 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (sets KERAS_HOME before keras is imported)

_common.setup_keras_home()
_common.shared_path("keras_home", "models", "mobilenet_2_5_224_tf.h5")
PHOTOS = _common.shared_path("cats_vs_dogs", "train")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_keras_vis.gradcam import Gradcam  # noqa: E402
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus  # noqa: E402
from tf_keras_vis.saliency import Saliency  # noqa: E402
from tf_keras_vis.utils.scores import CategoricalScore  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer import explain as ex  # noqa: E402
from keras_transfer.data import load_image_files  # noqa: E402

LAYER = "conv_pw_13_relu"


def race(peer_fn, ours_fn, repeats: int) -> dict:
    """Both called in turn `repeats` times after one warm-up call each, so both see the same machine load.

    Returns:
        `{"peer"|"ours": (last result, median wall seconds, median CPU seconds)}`.
    """
    results = {"peer": peer_fn(), "ours": ours_fn()}
    wall: dict[str, list[float]] = {"peer": [], "ours": []}
    cpu: dict[str, list[float]] = {"peer": [], "ours": []}
    for _ in range(repeats):
        for key, fn in (("peer", peer_fn), ("ours", ours_fn)):
            w, c = time.perf_counter(), time.process_time()
            results[key] = fn()
            wall[key].append(time.perf_counter() - w)
            cpu[key].append(time.process_time() - c)
    return {k: (results[k], statistics.median(wall[k]), statistics.median(cpu[k])) for k in results}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of Pearson's r between two batches of maps (constant maps skipped)."""
    values = []
    for x, y in zip(a.reshape(len(a), -1), b.reshape(len(b), -1)):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            values.append(float(np.corrcoef(x, y)[0, 1]))
    return float(np.mean(values)) if values else float("nan")


def load_photos(count: int) -> np.ndarray:
    paths = []
    for i in range(1, count // 2 + 2):
        paths += [os.path.join(PHOTOS, "cats", f"cat.{i}.jpg"), os.path.join(PHOTOS, "dogs", f"dog.{i}.jpg")]
    images, kept, _ = load_image_files(paths[:count], image_size=224)
    return images.astype(np.float32)


def corner_aligned(layer_maps: np.ndarray, size: int = 224) -> np.ndarray:
    """Layer maps upsampled as tf-keras-vis does: `scipy.ndimage.zoom(order=1)` (corners aligned)."""
    from scipy.ndimage import zoom

    factor = size / layer_maps.shape[1]
    return zoom(layer_maps, (1, factor, factor), order=1)


def run_both(model, backbone, images, classes, samples: int, repeats: int) -> dict:
    """`{method: race(...)}` of tf-keras-vis and ours, plus the peer's 7x7 Grad-CAM(++) maps."""
    x = tf.constant(images / 127.5 - 1.0)
    score = CategoricalScore(list(map(int, classes)))
    gradcam, plus = Gradcam(backbone, clone=False), GradcamPlusPlus(backbone, clone=False)
    saliency = Saliency(backbone, clone=False)
    cam_args = dict(penultimate_layer=LAYER, seek_penultimate_conv_layer=False)
    config = ex.ExplainConfig(layer=LAYER, smoothgrad_samples=samples, batch_size=len(images))
    explainer = ex.Explainer(model, config=config)
    peers = {
        "gradcam": lambda: gradcam(score, x, **cam_args),
        "gradcam_pp": lambda: plus(score, x, **cam_args),
        "gradients": lambda: saliency(score, x),
        "smoothgrad": lambda: saliency(score, x, smooth_samples=samples, smooth_noise=0.2),
    }
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method, peer_fn in peers.items():
            out[method] = race(peer_fn, lambda m=method: explainer(images, method=m, classes=classes), repeats)
        out["gradcam_layer"] = gradcam(score, x, expand_cam=False, **cam_args)
        out["gradcam_pp_layer"] = plus(score, x, expand_cam=False, **cam_args)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=32, help="photos, one batch (default: %(default)s).")
    parser.add_argument("--samples", type=int, default=20, help="SmoothGrad samples (default: %(default)s).")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each (default: %(default)s).")
    args = parser.parse_args()

    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    backbone = kt.models.get_backbone(model)
    images = load_photos(args.images)
    classes = np.argmax(keras.ops.convert_to_numpy(model(images)), axis=1)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, tf-keras-vis 0.8.7; {os.cpu_count()} CPU cores")
    print(f"model: MobileNet alpha=0.25 ImageNet, 224 px, logits; layer {LAYER}; {len(images)} cat and dog photos "
          f"in one batch; predicted classes; SmoothGrad {args.samples} samples, noise 0.2; median of "
          f"{args.repeats} calls after a warm-up")

    runs = run_both(model, backbone, images, classes, args.samples, args.repeats)

    print()
    print("r: Pearson correlation with tf-keras-vis' maps; 'image' = our maps as returned (half-pixel bilinear "
          "upsampling), 'same up.' = our 7x7 maps upsampled as tf-keras-vis does (corners aligned), '7x7' = before "
          "upsampling. Ratio = ours / tf-keras-vis images per second, by wall time and by process CPU time.")
    print(f"{'method':<12}{'tf-keras-vis img/s':>20}{'ours img/s':>12}{'ratio':>8}{'CPU ratio':>11}{'r image':>10}"
          f"{'r same up.':>12}{'r 7x7':>8}")
    n = len(images)
    for method in ("gradcam", "gradcam_pp", "gradients", "smoothgrad"):
        (peer_maps, peer_wall, peer_cpu), (result, wall, cpu) = runs[method]["peer"], runs[method]["ours"]
        row = f"{method:<12}{n / peer_wall:>20.1f}{n / wall:>12.1f}{peer_wall / wall:>7.1f}x{peer_cpu / cpu:>10.1f}x"
        row += f"{pearson(result.maps, np.asarray(peer_maps)):>10.4f}"
        if result.layer_maps is not None:
            row += f"{pearson(corner_aligned(result.layer_maps), np.asarray(peer_maps)):>12.4f}"
            row += f"{pearson(result.layer_maps, np.asarray(runs[method + '_layer'])):>8.4f}"
        print(row)
    (_, peer_wall, _), (result, wall, _) = runs["gradcam"]["peer"], runs["gradcam"]["ours"]
    ratio = peer_wall / wall
    r_layer = pearson(result.layer_maps, np.asarray(runs["gradcam_layer"]))
    verdict = "meets" if ratio >= 3 and r_layer >= 0.99 else "does NOT meet"
    print()
    print(f"Grad-CAM: ours {ratio:.1f}x tf-keras-vis images/s (wall) at r = {r_layer:.4f} (7x7, the same numbers): "
          f"{verdict} the target (>= 3x at r >= 0.99)")


if __name__ == "__main__":
    main()
