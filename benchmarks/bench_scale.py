"""Scale: does a class-per-folder set 30x larger than the shared photos train
with the defaults on this machine, with bounded peak memory and flat time per
image?

The input is generated from the 694 real Oxford-IIIT Pet photos in
../shared/data/oxford_pets: each generated photo is a re-encoded, lightly
changed copy of one of them (a random crop keeping 80-100% of each side, an
optional mirror, brightness and contrast within 10%, JPEG quality 80-95),
deterministic per (photo, copy). Copies are spread evenly over the photos, so
every breed grows in proportion. DIR/manifest.json lists the copies in an
order whose every prefix keeps the breeds' proportions (copy 0 of every photo,
then copy 1, ...), and `run` trains on nested subsets of it,
DIR/subsets/n<N>/ (symlinks to the first N), not on DIR itself. Copies of one
photo land in both training and validation, so the validation accuracy is a
sanity check, not a measure of generalization.

Each size is trained by the real command, one size after another, each in its
own process:

    python -m keras_transfer.experiments.folder --data-dir DIR/subsets/n<N>
        --output-dir RUNS/n<N> --verbose 2 [extra flags]

Measured per size: the child's peak RSS (os.wait4) and wall time; from its
metrics.json: the images used, where the decoded images were cached, the
phases' times per image and the validation accuracy. Then the spread over the
sizes of the peak RSS beyond the in-memory uint8 image cache (target <= 1.5)
and of the seconds per image (target <= 1.3).

Run:
    python benchmarks/bench_scale.py generate --out DIR [--count 20000]
    python benchmarks/bench_scale.py run --data DIR --runs RUNS [--sizes 1000,5000,20000]
        [--report FILE] [-- extra flags of the folder command]
    python benchmarks/bench_scale.py report --data DIR --runs RUNS [--sizes ...] [--report FILE]

`generate` and `run` resume: existing photos are kept, and a size whose
RUNS/n<N>/metrics.json exists is not run again (it is reported from its
RUNS/n<N>.bench.json, which `run` writes after each run).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import zlib
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (sets KERAS_HOME before keras is imported)

import numpy as np  # noqa: E402
from PIL import Image, ImageEnhance  # noqa: E402

# keras_transfer (and so TensorFlow) is imported only by the report: the
# generation forks workers and the runs measure child processes.

RSS_TARGET = 1.5
TIME_TARGET = 1.3
MANIFEST = "manifest.json"
SUBSETS = "subsets"


# ---------------------------------------------------------------------------
# Generation.


def breed_of(name: str) -> str:
    return os.path.splitext(name)[0].rsplit("_", 1)[0]


def copy_name(source: str, k: int) -> str:
    """`<breed>/<source stem>-<k>.jpg`: the breed is still the prefix before the last "_"."""
    return f"{breed_of(source)}/{os.path.splitext(source)[0]}-{k:03d}.jpg"


def stratified(sources: list[str]) -> list[str]:
    """The sources ordered so that every prefix holds the breeds in proportion:
    by position within the breed as a fraction of its size, then by breed."""
    by_breed: dict[str, list[str]] = {}
    for name in sorted(sources):
        by_breed.setdefault(breed_of(name), []).append(name)
    keyed = [((j + 0.5) / len(names), breed, name)
             for breed, names in by_breed.items() for j, name in enumerate(names)]
    return [name for _, _, name in sorted(keyed)]


def manifest_order(sources: list[str], count: int) -> list[tuple[str, int]]:
    """(source, copy index) of the first `count` copies: copy 0 of every source, then copy 1, ..."""
    order = stratified(sources)
    rounds = math.ceil(count / len(order))
    return [(name, k) for k in range(rounds) for name in order][:count]


def changed_copy(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """(a lightly changed copy of the RGB `image`, its JPEG quality)."""
    # Every value is drawn whatever the branches, so a copy depends only on its seed.
    w, h = image.size
    cw, ch = (max(1, round(side * rng.uniform(0.8, 1.0))) for side in (w, h))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    flip = bool(rng.random() < 0.5)
    brightness, contrast = rng.uniform(0.9, 1.1, size=2)
    quality = int(rng.integers(80, 96))
    out = image.crop((x0, y0, x0 + cw, y0 + ch))
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(float(brightness))
    out = ImageEnhance.Contrast(out).enhance(float(contrast))
    return out, quality


def make_copies(task: tuple[str, str, list[int], str, int]) -> tuple[int, int]:
    """Writes the missing copies `ks` of one source (decoded once); returns (written, already there)."""
    images_dir, source, ks, out, seed = task
    missing = [k for k in ks if not os.path.exists(os.path.join(out, copy_name(source, k)))]
    if not missing:
        return 0, len(ks)
    with Image.open(os.path.join(images_dir, source)) as opened:
        image = opened.convert("RGB")  # the GIF and the RGBA PNG among the sources become JPEGs too
    # crc32, not hash(): the same seed in every process and every Python.
    source_id = zlib.crc32(source.encode())
    for k in missing:
        copy, quality = changed_copy(image, np.random.default_rng([seed, source_id, k]))
        path = os.path.join(out, copy_name(source, k))
        # A hidden temporary name (the loader skips hidden files), then an atomic rename:
        # an interrupted generation leaves no truncated photo behind.
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
        copy.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)
    return len(missing), len(ks) - len(missing)


def write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def generate(out: str, count: int, *, seed: int, workers: int) -> None:
    images_dir = _common.shared_path("oxford_pets", "images")
    sources = sorted(n for n in os.listdir(images_dir) if not n.startswith("."))
    entries = manifest_order(sources, count)
    ks_by_source: dict[str, list[int]] = {}
    for source, k in entries:
        ks_by_source.setdefault(source, []).append(k)
    for breed in {breed_of(s) for s in sources}:
        folder = os.path.join(out, breed)
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):  # temporaries of an interrupted generation
            if name.startswith(".") and name.endswith(".tmp"):
                os.remove(os.path.join(folder, name))
    # Largest copy counts first, so that the last tasks are short.
    tasks = [(images_dir, s, ks, out, seed) for s, ks in sorted(ks_by_source.items(), key=lambda t: -len(t[1]))]
    print(f"{count} copies of {len(sources)} photos ({math.ceil(count / len(sources))} rounds) into {out}, "
          f"{workers} worker processes")
    written = kept = 0
    with _common.Timer() as timer, multiprocessing.Pool(workers) as pool:
        for i, (w, k) in enumerate(pool.imap_unordered(make_copies, tasks), 1):
            written, kept = written + w, kept + k
            if i % 100 == 0 or i == len(tasks):
                print(f"  {i}/{len(tasks)} photos, {written} copies written, {kept} already there, "
                      f"{time.strftime('%H:%M:%S')}", flush=True)
    files = [copy_name(s, k) for s, k in entries]
    write_json(os.path.join(out, MANIFEST), {"source": images_dir, "seed": seed, "count": count, "files": files})
    size = sum(os.path.getsize(os.path.join(out, f)) for f in files)
    print(f"Done in {timer.seconds:.0f} s: {written} written, {kept} already there; "
          f"the {count} photos take {size / 1e6:.0f} MB ({size / count / 1e3:.0f} KB each).")


# ---------------------------------------------------------------------------
# Subsets.


def subset_dir(data: str, n: int) -> str:
    return os.path.join(data, SUBSETS, f"n{n}")


def build_subset(data: str, files: list[str], n: int) -> str:
    """DIR/subsets/n<n>/<breed>/<file>: relative symlinks to the first `n` files of the manifest."""
    root = subset_dir(data, n)
    wanted = set(files[:n])
    if os.path.isdir(root):
        present = {os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names}
        if present == wanted:
            return root
        shutil.rmtree(root)
    tmp = os.path.join(data, SUBSETS, f".n{n}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in files[:n]:
        link = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        # Relative links: DIR can be moved.
        os.symlink(os.path.relpath(os.path.join(data, rel), os.path.dirname(os.path.join(root, rel))), link)
    os.replace(tmp, root)
    return root


# ---------------------------------------------------------------------------
# Runs.


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=_common.ROOT, capture_output=True, text=True).stdout.strip()

    # Others edit keras_transfer/ meanwhile: a dirty tree means the commit alone does not say what ran.
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "keras_transfer"))}


def run_size(data: str, runs: str, n: int, extra: list[str]) -> dict[str, Any]:
    """Runs the folder command on subset n<n> in a child process; returns and saves its measures."""
    out = os.path.join(runs, f"n{n}")
    command = [sys.executable, "-m", "keras_transfer.experiments.folder", "--data-dir", subset_dir(data, n),
               "--output-dir", out, "--verbose", "2", *extra]
    resumed = os.path.isdir(out)  # the command resumes an unfinished run there: this session is part of it
    log = os.path.join(runs, f"n{n}.log")
    print(f"n{n}: {' '.join(command[1:])}\n  log: {log}", flush=True)
    start = time.perf_counter()
    with open(log, "ab") as f:
        child = subprocess.Popen(command, cwd=_common.ROOT, stdout=f, stderr=subprocess.STDOUT)
        # wait4 rather than Popen.wait: it gives this child's own rusage (ru_maxrss in KB on Linux).
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    bench = {
        "size": n, "peak_rss_bytes": usage.ru_maxrss * 1024, "wall_s": wall, "exit_code": child.returncode,
        "resumed": resumed, "user_cpu_s": usage.ru_utime, "system_cpu_s": usage.ru_stime,
        "command": command, "git": git_commit(), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(os.path.join(runs, f"n{n}.bench.json"), bench)
    print(f"  exit {child.returncode}, {wall:.0f} s, peak RSS {usage.ru_maxrss / 2**20:.2f} GiB", flush=True)
    return bench


# ---------------------------------------------------------------------------
# Report.


def image_size_of(metrics: dict[str, Any]) -> int:
    """The run's image size: the one it was given, else its backbone's default (as the command decides)."""
    size = metrics["config"]["data"].get("image_size")
    if size is not None:
        return int(size)
    from keras_transfer import backbones

    return backbones.get_backbone_spec(metrics["config"]["train"]["backbone"]).default_size


def per_image(seconds: float | None, images: int) -> float | None:
    return None if seconds is None or images <= 0 else seconds / images


def measures(n: int, metrics: dict[str, Any], bench: dict[str, Any]) -> dict[str, Any]:
    """One size's row: memory, times per image, accuracy."""
    from keras_transfer import data as data_lib

    used = metrics["data"]["used"]
    train, val = used.get("train", 0), used.get("val", 0)
    images = sum(used.values())
    cache = metrics["data"].get("cache", "memory")
    uint8 = data_lib.image_cache_bytes(images, image_size_of(metrics))
    rss = bench["peak_rss_bytes"]
    beyond = rss - uint8 if cache == "memory" else rss
    config = metrics["config"]["train"]
    head = metrics["phases"].get("head", {})
    fine = metrics["phases"].get("fine_tune", {})

    # Phase 1: one extraction pass (training images, their mirror images, validation), then epochs on features.
    views = train * (2 if head.get("mirrored_features") else 1) + val
    head_epochs = head.get("epochs_done", 0)
    head_fit = None
    if "wall_time_s" in head:
        head_fit = (head["wall_time_s"] - head.get("feature_extraction_s", 0.0) - head.get("tensorboard_images_s", 0.0)
                    - (head.get("linear_probe") or {}).get("seconds", 0.0))
    # Phase 2 on the cached bottom (outputs usually kept from phase 1's pass) or on images.
    fine_epochs = fine.get("epochs_done", 0)
    fine_fit = None
    if "wall_time_s" in fine:
        fine_fit = fine["wall_time_s"] - fine.get("bottom_extraction_s", 0.0) - fine.get("tensorboard_images_s", 0.0)
    bottom_views = train * (2 if config.get("augment") else 1) + val
    on_bottom = bool(fine.get("on_cached_bottom", "bottom_output_shape" in fine)) and "bottom_output_shape" in fine
    bottom = bottom_views * int(np.prod(fine["bottom_output_shape"])) * 4 if on_bottom else 0  # float32
    final_eval = metrics.get("timings", {}).get("final_evaluation_s")
    run_clock = metrics["wall_time_s"]
    timed = sum(p.get("wall_time_s", 0.0) for p in (head, fine)) + (final_eval or 0.0)
    val_final = metrics["final"].get("val")
    return {
        "size": n, "images": images, "train": train, "val": val, "skipped": metrics["data"].get("skipped", 0),
        "cache": cache, "uint8": uint8, "bottom": bottom, "on_bottom": on_bottom,
        "rss": rss, "beyond": beyond, "wall": bench["wall_s"],
        "s_per_image": bench["wall_s"] / images,
        "outside": per_image(bench["wall_s"] - run_clock, images),
        "p1_extract": per_image(head.get("feature_extraction_s"), views),
        "p1_epoch": per_image(head_fit, train * head_epochs),
        "p2_bottom": per_image(fine.get("bottom_extraction_s"), bottom_views) if on_bottom else None,
        "p2_epoch": per_image(fine_fit, train * fine_epochs),
        "final_eval": per_image(final_eval, images),
        "other": per_image(run_clock - timed, images),
        "pictures_s": head.get("tensorboard_images_s", 0.0) + fine.get("tensorboard_images_s", 0.0),
        "epochs": f"{head_epochs}/{fine_epochs}" + ("s" if fine.get("stopped_early") else ""),
        "val_acc": val_final["accuracy"] if val_final else None,
        "resumed": bool(bench.get("resumed") or metrics.get("resumed_at")),
        "git": bench.get("git", {}),
    }


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def spread(values: list[float]) -> float | None:
    return max(values) / min(values) if values and min(values) > 0 else None


def marginal_lines(rows: list[dict]) -> list[str]:
    """Seconds per image added from one size to the next: a cost that grows with the set shows here,
    where the whole run's seconds per image also divide the fixed costs (start-up, compiling)."""
    rows = sorted(rows, key=lambda r: r["size"])
    if len(rows) < 2:
        return []
    steps = [(a, b, (b["wall"] - a["wall"]) / (b["images"] - a["images"])) for a, b in zip(rows, rows[1:])]
    lines = ["", "Seconds per image added between sizes (the child's wall time; fixed costs cancel):"]
    lines += [f"  {a['size']:>6} -> {b['size']:<6} {rate:.4f} s/img" for a, b, rate in steps]
    rate = steps[0][2]
    lines.append(f"  fixed cost implied by the first two sizes: {rows[0]['wall'] - rate * rows[0]['images']:.0f} s")
    if len(steps) > 1:
        lines.append(f"  spread of the added seconds per image: {fmt_ratio(spread([r for _, _, r in steps]))}")
    return lines


def report(data: str, runs: str, sizes: list[int]) -> str:
    rows, notes = [], []
    for n in sizes:
        metrics_path = os.path.join(runs, f"n{n}", "metrics.json")
        bench_path = os.path.join(runs, f"n{n}.bench.json")
        if not os.path.isfile(metrics_path):
            notes.append(f"n{n}: no {metrics_path} (run failed or not run; see {runs}/n{n}.log)")
            continue
        if not os.path.isfile(bench_path):
            notes.append(f"n{n}: {metrics_path} exists without {bench_path} (not run by this script): left out")
            continue
        with open(metrics_path) as f, open(bench_path) as g:
            rows.append(measures(n, json.load(f), json.load(g)))
    lines = [f"Scale benchmark: {data} -> {runs}, {os.cpu_count()} CPUs"]
    commits = {(r["git"].get("commit", "?")[:10], r["git"].get("dirty")) for r in rows}
    lines.append("code: " + ", ".join(f"{c}{' (keras_transfer/ modified)' if d else ''}" for c, d in sorted(commits)))
    if rows:
        smallest = min(rows, key=lambda r: r["size"])["beyond"]
        lines += [
            "",
            "Memory and totals (GiB; RSS-uint8: peak RSS minus the uint8 image cache when it is in memory)",
            f"{'size':>6} {'images (train/val)':>17} {'cache':>7} {'uint8':>6} {'bottom':>7} {'peakRSS':>8} "
            f"{'RSS-uint8':>9} {'ratio':>6} {'wall s':>7} {'s/img':>7} {'epochs':>7} {'val acc':>7}",
        ]
        for r in rows:
            acc = "-" if r["val_acc"] is None else f"{r['val_acc']:.3f}"
            images = f"{r['images']} ({r['train']}/{r['val']})"
            cache = r["cache"].split(":")[0]  # "file:PREFIX" -> "file"
            lines.append(
                f"{r['size']:>6} {images:>17} {cache:>7} {gib(r['uint8']):>6} {gib(r['bottom']):>7} {gib(r['rss']):>8} "
                f"{gib(r['beyond']):>9} {r['beyond'] / smallest:>6.2f} {r['wall']:>7.0f} {r['s_per_image']:>7.4f} "
                f"{r['epochs']:>7} {acc:>7}" + ("  (resumed)" if r["resumed"] else ""))
        lines += [
            "",
            "Time per image by phase (ms; epochs: per training image per epoch; extraction: per view)",
            f"{'size':>6} {'outside':>8} {'p1 extract':>10} {'p1 epoch':>9} {'p2 bottom':>9} {'p2 epoch':>9} "
            f"{'final eval':>10} {'other':>7} {'pictures s':>10}",
        ]
        for r in rows:
            lines.append(
                f"{r['size']:>6} {fmt_ms(r['outside']):>8} {fmt_ms(r['p1_extract']):>10} {fmt_ms(r['p1_epoch']):>9} "
                f"{fmt_ms(r['p2_bottom']):>9} {fmt_ms(r['p2_epoch']):>9} {fmt_ms(r['final_eval']):>10} "
                f"{fmt_ms(r['other']):>7} {r['pictures_s']:>10.1f}")
        lines += [
            "  images: used (train/val) from metrics.json; cache: where the run kept the decoded images;",
            "  uint8: data.image_cache_bytes of the images used; bottom: the size of phase 2's cached bottom",
            "  outputs (float32; training images, their mirror images, validation), 0 when phase 2 ran on",
            "  images; since 530f641 they are files in the run folder's state/, read a batch at a time",
            "  (before it they were held in memory); no RSS column subtracts them;",
            "  s/img: the child's wall time / images used; epochs: phase 1 / phase 2 ('s': stopped early).",
            "  outside: the child's wall time beyond the run's own clock (start-up, imports, building the",
            "  model to check it, loading and decoding the images, plots); other: the run's clock beyond the",
            "  phases and the final evaluation (model building, flip test, writing outputs); p2 bottom:",
            "  phase 2's own pass for its cached bottom (about 0 when phase 1's extraction computed it).",
            "  Phase times exclude their TensorBoard pictures (a fixed cost, in 'pictures s').",
            "",
            "Spread over sizes (max / min):",
        ]
        rss_spread = spread([r["beyond"] for r in rows])
        time_spread = spread([r["s_per_image"] for r in rows])
        lines += [
            f"  peak RSS beyond the uint8 cache   {fmt_ratio(rss_spread)}   (target <= {RSS_TARGET})",
            f"  seconds per image                 {fmt_ratio(time_spread)}   (target <= {TIME_TARGET})",
        ]
        lines += marginal_lines(rows)
    lines += [""] + notes if notes else []
    return "\n".join(lines)


# ---------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" goes to the folder command as it is.
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description="Training the defaults on 1k to 20k generated pet photos: "
                                                 "peak memory and time per image by size.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write DIR/<breed>/<photo>.jpg and DIR/manifest.json")
    gen.add_argument("--out", required=True, help="the folder of the generated photos (DIR)")
    gen.add_argument("--count", type=int, default=20000, help="photos to generate")
    gen.add_argument("--seed", type=int, default=0, help="seed of the changes made to the copies")
    gen.add_argument("--workers", type=int, default=2, help="worker processes")
    for name, what in (("run", "train each size, then report"), ("report", "report the runs made")):
        sub = commands.add_parser(name, help=what)
        sub.add_argument("--data", required=True, help="the folder `generate` wrote (DIR)")
        sub.add_argument("--runs", required=True, help="folder of the runs: RUNS/n<N>/, n<N>.log, n<N>.bench.json")
        sub.add_argument("--sizes", type=parse_sizes, default=[1000, 5000, 20000], help="comma-separated sizes")
        sub.add_argument("--report", help="also write the report to this text file")
    args = parser.parse_args(argv)

    if args.command == "generate":
        if extra:
            parser.error("generate takes no extra flags")
        generate(os.path.abspath(args.out), args.count, seed=args.seed, workers=args.workers)
        return

    data, runs = os.path.abspath(args.data), os.path.abspath(args.runs)
    if args.command == "run":
        with open(os.path.join(data, MANIFEST)) as f:
            files = json.load(f)["files"]
        if max(args.sizes) > len(files):
            sys.exit(f"{data}/{MANIFEST} lists {len(files)} photos, fewer than {max(args.sizes)}: generate more.")
        os.makedirs(runs, exist_ok=True)
        _common.setup_keras_home()  # inherited by the children
        for n in args.sizes:
            build_subset(data, files, n)
            if os.path.isfile(os.path.join(runs, f"n{n}", "metrics.json")):
                print(f"n{n}: finished earlier, not run again")
                continue
            run_size(data, runs, n, extra)
    elif extra:
        parser.error("report takes no extra flags")
    text = report(data, runs, args.sizes)
    print("\n" + text)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
