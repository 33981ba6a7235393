"""Registry of Keras Applications backbones.

Each entry knows its builder, its preprocessing (see
`keras_transfer.layers.ImagePreprocessing`) and its default input size. Names
are matched case-insensitively and ignoring `_` and `-`, so `"mobilenet_v2"`,
`"MobileNetV2"` and `"mobilenetv2"` are the same backbone.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
import re
import zipfile
from collections.abc import Callable

import keras

from keras_transfer import _downloads
from keras_transfer.errors import CorruptFileError

WEIGHTS_CHOICES_HELP = '"imagenet", a path to a weights file, or None'
# What `keras.Model.load_weights` reads (by extension).
WEIGHTS_EXTENSIONS = (".weights.h5", ".h5", ".hdf5", ".keras")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the package knows about one Keras Applications model.

    Attributes:
        name: canonical name in this registry (`"mobilenet_v2"`).
        constructor: name of the `keras.applications` function (`"MobileNetV2"`).
        module: name of the `keras.applications` module holding its
            `preprocess_input` (`"mobilenet_v2"`).
        preprocessing: mode of `ImagePreprocessing` that equals that
            `preprocess_input`.
        default_size: the input size of its ImageNet weights.
        min_size: the smallest input size the architecture accepts.
        alphas: width multipliers with ImageNet weights, or `()` when the
            family has no `alpha`.
        rescales_internally: True when the backbone has its own rescaling
            layers (so `ImagePreprocessing` is the identity).
    """

    name: str
    constructor: str
    module: str
    preprocessing: str
    default_size: int
    min_size: int = 32
    alphas: tuple[float, ...] = ()
    rescales_internally: bool = False

    @property
    def builder(self) -> Callable[..., keras.Model]:
        return getattr(keras.applications, self.constructor)

    @property
    def preprocess_input(self) -> Callable:
        return getattr(keras.applications, self.module).preprocess_input

    @property
    def default_alpha(self) -> float | None:
        return 1.0 if self.alphas else None


def _spec(*args, **kwargs) -> tuple[str, BackboneSpec]:
    spec = BackboneSpec(*args, **kwargs)
    return spec.name, spec


_MOBILENET_ALPHAS = (0.25, 0.5, 0.75, 1.0)
_MOBILENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
_MOBILENET_V3_ALPHAS = (0.75, 1.0)

_EFFICIENTNET_SIZES = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
_EFFICIENTNET_V2_SIZES = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "s": 384, "m": 480, "l": 480}

BACKBONES: dict[str, BackboneSpec] = dict(
    [
        _spec("vgg16", "VGG16", "vgg16", "caffe", 224),
        _spec("vgg19", "VGG19", "vgg19", "caffe", 224),
        _spec("resnet50", "ResNet50", "resnet50", "caffe", 224),
        _spec("resnet101", "ResNet101", "resnet", "caffe", 224),
        _spec("resnet152", "ResNet152", "resnet", "caffe", 224),
        _spec("resnet50_v2", "ResNet50V2", "resnet_v2", "tf", 224),
        _spec("resnet101_v2", "ResNet101V2", "resnet_v2", "tf", 224),
        _spec("resnet152_v2", "ResNet152V2", "resnet_v2", "tf", 224),
        _spec("mobilenet", "MobileNet", "mobilenet", "tf", 224, alphas=_MOBILENET_ALPHAS),
        _spec("mobilenet_v2", "MobileNetV2", "mobilenet_v2", "tf", 224, alphas=_MOBILENET_V2_ALPHAS),
        _spec(
            "mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", "identity", 224,
            alphas=_MOBILENET_V3_ALPHAS, rescales_internally=True,
        ),
        _spec(
            "mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", "identity", 224,
            alphas=_MOBILENET_V3_ALPHAS, rescales_internally=True,
        ),
        *[
            _spec(f"efficientnet_{v}", f"EfficientNet{v.upper()}", "efficientnet", "identity", size,
                  rescales_internally=True)
            for v, size in _EFFICIENTNET_SIZES.items()
        ],
        *[
            _spec(f"efficientnet_v2_{v}", f"EfficientNetV2{v.upper()}", "efficientnet_v2", "identity", size,
                  rescales_internally=True)
            for v, size in _EFFICIENTNET_V2_SIZES.items()
        ],
        _spec("xception", "Xception", "xception", "tf", 299, min_size=71),
        _spec("inception_v3", "InceptionV3", "inception_v3", "tf", 299, min_size=75),
        _spec("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", "tf", 299, min_size=75),
        _spec("densenet121", "DenseNet121", "densenet", "torch", 224),
        _spec("densenet169", "DenseNet169", "densenet", "torch", 224),
        _spec("densenet201", "DenseNet201", "densenet", "torch", 224),
        *[
            _spec(f"convnext_{v.lower()}", f"ConvNeXt{v}", "convnext", "identity", 224,
                  rescales_internally=True)
            for v in ("Tiny", "Small", "Base", "Large", "XLarge")
        ],
        _spec("nasnet_mobile", "NASNetMobile", "nasnet", "tf", 224),
        _spec("nasnet_large", "NASNetLarge", "nasnet", "tf", 331),
    ]
)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(name): spec for name, spec in BACKBONES.items()}
_BY_KEY.update({_key(spec.constructor): spec for spec in BACKBONES.values()})


def available_backbones() -> list[str]:
    """The canonical names of all registered backbones."""
    return list(BACKBONES)


def get_backbone_spec(name: str) -> BackboneSpec:
    """Looks up a backbone by name.

    Raises:
        ValueError: for an unknown name; the message lists the valid names and
            the closest matches.
    """
    if not isinstance(name, str):
        raise TypeError(f"Expected a backbone name (str). Received: name={name!r}")
    spec = _BY_KEY.get(_key(name))
    if spec is None:
        close = difflib.get_close_matches(name.lower(), list(BACKBONES), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown backbone. Received: name={name!r}.{hint} "
            f"Valid names: {', '.join(BACKBONES)}"
        )
    return spec


def resolve_alpha(spec: BackboneSpec, alpha: float | None) -> float | None:
    """Checks `alpha` against the family; None means the family default."""
    if alpha is None:
        return spec.default_alpha
    if not spec.alphas:
        raise ValueError(
            f"Backbone {spec.name!r} has no width multiplier; only MobileNet families take `alpha`. "
            f"Received: alpha={alpha!r}"
        )
    if alpha <= 0:
        raise ValueError(f"Expected alpha > 0. Received: alpha={alpha!r}")
    return float(alpha)


def check_weights(weights: str | os.PathLike | None) -> str | None:
    """Validates a backbone `weights` argument (also the `--weights` flag's value).

    Args:
        weights: `None` (random initialization; the string `"none"` too, as
            on the command line), `"imagenet"`, or the path of an existing
            weights file that `keras.Model.load_weights` reads (see
            `WEIGHTS_EXTENSIONS`). Only the path is checked here: a file
            that is not readable HDF5 is reported as `CorruptFileError` by
            `build_backbone`, when the weights are loaded.

    Returns:
        `None`, `"imagenet"` or the path as a `str`.

    Raises:
        ValueError: for any other value; the message names it.
    """
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"Expected weights to be {WEIGHTS_CHOICES_HELP}. Received: weights={weights!r}")
    path = os.fspath(weights)
    if not os.path.isfile(path) and path.lower() in ("imagenet", "none"):
        return None if path.lower() == "none" else "imagenet"
    if not os.path.isfile(path):
        raise ValueError(
            f"Expected weights to be {WEIGHTS_CHOICES_HELP}; no file exists at that path. "
            f"Received: weights={weights!r}"
        )
    if not path.endswith(WEIGHTS_EXTENSIONS):
        raise ValueError(
            f"Expected a weights file ending in one of {', '.join(WEIGHTS_EXTENSIONS)} "
            f"(what keras.Model.load_weights reads). Received: weights={weights!r}"
        )
    return path


def check_image_size(spec: BackboneSpec, image_size: int | None) -> int:
    if image_size is None:
        return spec.default_size
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise ValueError(
            f"Expected image_size to be an int >= {spec.min_size} (pixels; backbone {spec.name!r}). "
            f"Received: image_size={image_size!r}"
        )
    image_size = int(image_size)
    if image_size < spec.min_size:
        raise ValueError(
            f"Backbone {spec.name!r} needs an image size of at least {spec.min_size} pixels. "
            f"Received: image_size={image_size!r}"
        )
    return image_size


def build_backbone(
    name: str,
    *,
    image_size: int | None = None,
    alpha: float | None = None,
    weights: str | os.PathLike | None = "imagenet",
    include_top: bool = False,
    classifier_activation: str | None = None,
) -> keras.Model:
    """Builds a Keras Applications model by registry name.

    With `include_top=False` (the default) the model maps images to feature
    maps (no pooling); the package's classifier adds pooling and its own head.
    The model expects the backbone's own preprocessing: use
    `ImagePreprocessing(get_backbone_spec(name).preprocessing)` in front of it,
    as `keras_transfer.models` does.

    Args:
        name: registry name, e.g. `"mobilenet_v2"`; see `available_backbones()`.
        image_size: side of the square input in pixels. Defaults to the
            family's default size (224 for most).
        alpha: width multiplier of the MobileNet families. Defaults to `1.0`
            for those families and must be `None` for the others.
        weights: `"imagenet"`, a path to a weights file, or `None` (random
            initialization). Defaults to `"imagenet"`.
        include_top: keep the 1000-class ImageNet classifier. Defaults to
            `False`.
        classifier_activation: activation of the ImageNet top when
            `include_top=True`; keep `None` to get logits. Defaults to `None`.

    Raises:
        ValueError: for an unknown name, a bad alpha, size or weights value.
        keras_transfer.WeightsUnavailableError: when the ImageNet weights are
            neither cached nor downloadable (offline machine); raised within
            seconds, with instructions.
        keras_transfer.errors.CorruptFileError: when `weights` is a file
            that cannot be read (not HDF5, truncated, empty).
    """
    spec = get_backbone_spec(name)
    size = check_image_size(spec, image_size)
    alpha = resolve_alpha(spec, alpha)
    weights = check_weights(weights)
    kwargs: dict = {
        "include_top": include_top,
        "weights": weights,
        "input_shape": (size, size, 3),
    }
    if include_top:
        kwargs["classifier_activation"] = classifier_activation
    if alpha is not None:
        kwargs["alpha"] = alpha
    if spec.rescales_internally:
        kwargs["include_preprocessing"] = True
    if spec.constructor.startswith("EfficientNet") and not spec.constructor.startswith("EfficientNetV2"):
        # EfficientNet v1 has no include_preprocessing argument: it always rescales.
        kwargs.pop("include_preprocessing")
    with _downloads.fail_fast_downloads(what=f"ImageNet weights of {spec.name!r}"):
        try:
            return spec.builder(**kwargs)
        except ValueError as error:
            # Keras' own message (e.g. an alpha or size without ImageNet
            # weights) is kept; the registry name is added for context.
            raise ValueError(f"Could not build backbone {spec.name!r} with {kwargs}: {error}") from error
        except (OSError, EOFError, zipfile.BadZipFile) as error:
            # h5py (or zipfile, for a `.keras` file) cannot read the weights file.
            if weights is None or weights == "imagenet" or isinstance(error, PermissionError):
                raise
            raise CorruptFileError(
                f"The weights file {weights!r} cannot be read ({_first_line(error)}); expected weights "
                f"of {spec.name!r} saved by Keras (HDF5 .h5 / .weights.h5, or a .keras file)."
            ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
