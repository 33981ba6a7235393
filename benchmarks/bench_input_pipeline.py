"""Input pipeline: keras_transfer.data vs. keras.utils.image_dataset_from_directory.

Both read the 694 real Oxford-IIIT Pet photos in ../shared/data/oxford_pets
(through a temporary class-per-folder tree of symlinks, which
image_dataset_from_directory needs) and deliver shuffled batches of 32 images
of 224x224 with their labels, in one process, in alternating rounds.

Measured, in images per second (median over the rounds):

- cold: the first pass, decode + resize, from the call that builds the
  pipeline to the end of the first epoch (files already in the OS page cache
  for both);
- steady: later epochs. Ours reads its uint8 cache and reshuffles every
  epoch. The peer is used as the keras.io tutorial "Image classification from
  scratch" uses it (`.prefetch(AUTOTUNE)`, so it decodes every epoch), and,
  as a second line, with `.cache().prefetch(AUTOTUNE)` as in the TensorFlow
  tutorial "Load and preprocess images" (it then replays the batches of its
  first epoch, in the same order, every epoch);
- decode only: ours with `cache=False` vs. the peer without cache, both
  decoding and resizing every epoch (ours' cold pass is then two decode
  passes: the load counts the undecodable files first).

Wall-clock figures are noisy on a shared machine; the process CPU time per
image (all threads) is printed beside them and is much steadier.

Quality: both pipelines' images against a reference resize (PIL, full-size
decode, Lanczos) as mean absolute difference (0-255 scale), 99th percentile
and PSNR, over all images and over the large JPEGs our pipeline decodes at a
reduced DCT scale; and what each does with an undecodable file.

- a training run: the total wall time of the first pass plus k-1 epochs,
  for k up to `--epochs` + 1 (the main job's phase 1 reads every image once
  for its cached features, then fine-tunes for 10 epochs).

Run: python benchmarks/bench_input_pipeline.py [--rounds 3] [--epochs 10]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (sets KERAS_HOME before keras is imported)

_common.setup_keras_home()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from keras_transfer import data  # noqa: E402

IMAGE_SIZE = 224
BATCH_SIZE = 32
AUTOTUNE = tf.data.AUTOTUNE


def symlink_tree(images_dir: str, root: str) -> list[str]:
    """root/<breed>/<file> -> images_dir/<file>; returns the link paths in
    class-then-name order (the order of both pipelines without shuffling)."""
    links = []
    for name in sorted(os.listdir(images_dir)):
        breed = os.path.splitext(name)[0].rsplit("_", 1)[0]
        os.makedirs(os.path.join(root, breed), exist_ok=True)
        link = os.path.join(root, breed, name)
        os.symlink(os.path.join(images_dir, name), link)
        links.append(link)
    return sorted(links, key=lambda p: (os.path.basename(os.path.dirname(p)), os.path.basename(p)))


def count_epoch(ds) -> int:
    n = 0
    for images, _ in ds:
        n += int(images.shape[0])
    return n


class Clock:
    """Wall-clock and process CPU seconds (all threads) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_peer(tree: str, *, epochs: int, cache: bool) -> tuple[Clock, list[Clock], int]:
    """(cold pass clock, steady epoch clocks, images per epoch)."""
    with Clock() as cold:
        ds = keras.utils.image_dataset_from_directory(
            tree, image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=BATCH_SIZE, shuffle=True, seed=0,
            verbose=False,
        )
        if cache:
            ds = ds.cache()
        ds = ds.prefetch(AUTOTUNE)
        n = count_epoch(ds)
    steady = []
    for _ in range(epochs):
        with Clock() as t:
            assert count_epoch(ds) == n
        steady.append(t)
    return cold, steady, n


def run_ours(tree: str, *, epochs: int, cache: bool) -> tuple[Clock, list[Clock], int]:
    with Clock() as cold:
        loaded = data.load_folder(tree, image_size=IMAGE_SIZE, val_split=0.0, seed=0, cache=cache)
        ds = data.batch_dataset(loaded.train, batch_size=BATCH_SIZE, shuffle=True, seed=0)
        n = count_epoch(ds)
    steady = []
    for _ in range(epochs):
        with Clock() as t:
            assert count_epoch(ds) == n
        steady.append(t)
    return cold, steady, n


def reference(path: str) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
        return np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS), np.float32)


def quality_line(name: str, images: np.ndarray, ref: np.ndarray) -> str:
    diff = np.abs(images.astype(np.float32) - ref)
    mse = float(np.mean(diff**2))
    psnr = 10 * np.log10(255.0**2 / mse)
    return (
        f"  {name:<34} mean |diff| {diff.mean():5.2f}   99th pct {np.percentile(diff, 99):4.0f}"
        f"   PSNR {psnr:5.2f} dB"
    )


def robustness(tmp: str) -> tuple[str, str]:
    """What each pipeline does with a tree holding one zero-byte .jpg."""
    tree = os.path.join(tmp, "robust")
    for cls in ("a", "b"):
        os.makedirs(os.path.join(tree, cls))
        for k in range(2):
            Image.fromarray(np.full((40, 40, 3), 60 * k, np.uint8)).save(os.path.join(tree, cls, f"{k}.jpg"))
    open(os.path.join(tree, "a", "empty.jpg"), "wb").close()
    try:
        ds = keras.utils.image_dataset_from_directory(tree, image_size=(32, 32), batch_size=2, verbose=False)
        peer = f"ran, {count_epoch(ds)} images"
    except tf.errors.OpError as error:
        peer = f"raises {type(error).__name__} while iterating"
    loaded = data.load_folder(tree, image_size=32, val_split=0.0)
    ours = f"{loaded.report.used['train']} images used, skipped={loaded.report.skipped} {loaded.report.skipped_files}"
    return peer, ours


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs after the first pass per round (the main job fine-tunes for 10)")
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")

    images_dir = _common.shared_path("oxford_pets", "images")
    tmp = _common.temp_dir("bench_input_")
    tree = os.path.join(tmp, "tree")
    links = symlink_tree(images_dir, tree)
    for path in links:  # both cold passes then read from the OS page cache
        with open(path, "rb") as f:
            f.read()

    print(f"{len(links)} Oxford-IIIT Pet photos, {IMAGE_SIZE}x{IMAGE_SIZE}, batch {BATCH_SIZE}, "
          f"{args.rounds} rounds x (cold + {args.epochs} steady epochs), TF {tf.__version__}, "
          f"Keras {keras.__version__}, {os.cpu_count()} CPUs")
    runs = {
        "ours": lambda: run_ours(tree, epochs=args.epochs, cache=True),
        "peer": lambda: run_peer(tree, epochs=args.epochs, cache=False),
        "peer_cached": lambda: run_peer(tree, epochs=args.epochs, cache=True),
        "ours_nocache": lambda: run_ours(tree, epochs=args.epochs, cache=False),
    }
    cold = {k: [] for k in runs}
    steady = {k: [] for k in runs}
    passes = {k: [] for k in runs}  # per round: wall seconds of the first pass, then of each epoch
    counts = {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            c, s, n = run()
            counts[name] = n
            cold[name].append(c)
            steady[name].append(min(s, key=lambda clock: clock.wall))
            passes[name].append([c.wall] + [clock.wall for clock in s])

    labels = {
        "ours": "ours (load_folder + batch_dataset)",
        "peer": "peer, keras.io way (.prefetch)",
        "peer_cached": "peer + .cache().prefetch (TF tutorial)",
        "ours_nocache": "ours, cache=False",
    }
    med = statistics.median
    print("\nPer pipeline: median over rounds of images/s (wall clock), per-round values in brackets;")
    print("CPU = process CPU ms per image, all threads (steadier than wall clock on a shared machine)")
    for k in runs:
        n = counts[k]
        print(f"  {labels[k]:<40} {n} img/epoch")
        print(f"      cold   {med(n / c.wall for c in cold[k]):7.0f} img/s {[round(n / c.wall) for c in cold[k]]}"
              f"   CPU {med(c.cpu / n * 1e3 for c in cold[k]):5.2f} ms/img")
        print(f"      steady {med(n / c.wall for c in steady[k]):7.0f} img/s {[round(n / c.wall) for c in steady[k]]}"
              f"   CPU {med(c.cpu / n * 1e3 for c in steady[k]):5.2f} ms/img  (best of {args.epochs} epochs)")

    def ratio(clocks, a, b):
        return med(clocks[b][i].wall / clocks[a][i].wall for i in range(args.rounds))

    def cpu_ratio(clocks, a, b):
        return med(clocks[b][i].cpu / clocks[a][i].cpu for i in range(args.rounds))

    def run_ratio(a, b, k):
        """Wall time of the first k passes (the first + k-1 epochs), b / a."""
        return med(sum(passes[b][i][:k]) / sum(passes[a][i][:k]) for i in range(args.rounds))

    print("\nSpeed-up ours / peer = peer time / our time (median of per-round ratios; CPU-time ratio beside)")
    rows = [
        ("cold first pass (decode+resize)", "ours", "peer", cold),
        ("steady epoch vs peer as in keras.io", "ours", "peer", steady),
        ("steady epoch vs peer with .cache()", "ours", "peer_cached", steady),
        ("cold pass, no cache either side", "ours_nocache", "peer", cold),
        ("steady epoch, no cache either side", "ours_nocache", "peer", steady),
    ]
    for title, a, b, clocks in rows:
        print(f"  {title:<40} {a:>12} / {b:<11} {ratio(clocks, a, b):5.2f}x   CPU {cpu_ratio(clocks, a, b):5.2f}x")
    print("\nA training run of k passes over the images (the first pass + k-1 epochs), total wall time:")
    print(f"  {'k':>3} {'ours / peer (keras.io)':>24} {'ours / peer with .cache()':>27}")
    for k in sorted({1, 2, 3, 4, 6, args.epochs + 1} & set(range(1, args.epochs + 2))):
        print(f"  {k:>3} {run_ratio('ours', 'peer', k):23.2f}x {run_ratio('ours', 'peer_cached', k):26.2f}x")

    # Quality: the same files in the same order, vs. a reference. load_folder
    # caches in a seeded order; load_image_files runs its decode in path order.
    ours_images, kept, _ = data.load_image_files(links, image_size=IMAGE_SIZE)
    assert kept == links
    peer_ds = keras.utils.image_dataset_from_directory(
        tree, image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=128, shuffle=False, verbose=False
    )
    assert [os.path.realpath(p) for p in peer_ds.file_paths] == [os.path.realpath(p) for p in links]
    peer_images = np.concatenate([x.numpy() for x, _ in peer_ds])
    ref = np.stack([reference(p) for p in links])
    no_dct = np.stack(
        [data.resize_image(data.decode_image(tf.io.read_file(p)), image_size=IMAGE_SIZE).numpy() for p in links]
    )

    sizes = []
    for p in links:
        with open(p, "rb") as f:
            head = f.read()
        jpeg = head[:3] == b"\xff\xd8\xff"
        with Image.open(io.BytesIO(head)) as image:
            sizes.append((jpeg, min(image.size)))
    dct = np.array([jpeg and side >= 2 * data.DCT_MARGIN * IMAGE_SIZE for jpeg, side in sizes])

    print("\nQuality vs reference (PIL full decode + Lanczos to 224)")
    print(f"  images: ours {len(ours_images)}, peer {len(peer_images)}, in file order; ours uint8, peer float32")
    print(f" all {len(links)} images")
    print(quality_line("ours (area; DCT-scaled large JPEGs)", ours_images, ref))
    print(quality_line("ours, full-size decode", no_dct, ref))
    print(quality_line("peer (bilinear)", np.clip(np.round(peer_images), 0, 255), ref))
    print(f" the {int(dct.sum())} large JPEGs ours decodes at reduced DCT scale")
    print(quality_line("ours (DCT-scaled)", ours_images[dct], ref[dct]))
    print(quality_line("ours, full-size decode", no_dct[dct], ref[dct]))
    print(quality_line("peer (bilinear)", np.clip(np.round(peer_images[dct]), 0, 255), ref[dct]))
    print(f"  ours vs peer, all images: mean |diff| "
          f"{np.abs(ours_images.astype(np.float32) - peer_images).mean():.2f}")

    peer, ours = robustness(tmp)
    print("\nA class folder with one zero-byte .jpg")
    print(f"  peer: {peer}")
    print(f"  ours: {ours}")


if __name__ == "__main__":
    main()
