"""keras_transfer: transfer learning on images with Keras 3.

Pretrained Keras Applications backbones wrapped in functional classifiers that
take RGB pixels in [0, 255]; two-phase training (head on cached features, then
fine-tuning); class visualization and adversarial examples on any classifier.
"""

from keras_transfer._downloads import DatasetUnavailableError, WeightsUnavailableError
from keras_transfer.backbones import available_backbones, build_backbone, get_backbone_spec
from keras_transfer.layers import ImagePreprocessing, InferenceBackbone, build_augmentation
from keras_transfer.models import (
    build_classifier,
    build_imagenet_classifier,
    freeze_backbone,
    load_model,
    unfreeze_backbone,
)

__version__ = "0.1.0"

__all__ = [
    "DatasetUnavailableError",
    "ImagePreprocessing",
    "InferenceBackbone",
    "WeightsUnavailableError",
    "available_backbones",
    "build_augmentation",
    "build_backbone",
    "build_classifier",
    "build_imagenet_classifier",
    "freeze_backbone",
    "get_backbone_spec",
    "load_model",
    "unfreeze_backbone",
]
