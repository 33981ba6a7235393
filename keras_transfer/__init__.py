"""keras_transfer: transfer learning on images with Keras 3.

Pretrained Keras Applications backbones wrapped in functional classifiers that
take RGB pixels in [0, 255]; two-phase training (head on cached features, then
fine-tuning); class visualization and adversarial examples on any classifier.

Submodules: `backbones`, `layers`, `models`, `data`, `training`, `phases`,
`evaluation`, `calibration`, `inference`, `export`, `explain`, `probe`,
`visualization`, `adversarial`, `adversarial_training`, `mixing`, `training_wrapper`, `corruptions`,
`classes`, `imagenet`, `plotting`, and the command lines in `experiments`.
"""

from keras_transfer._downloads import DatasetUnavailableError, WeightsUnavailableError
from keras_transfer.adversarial import (
    APGD,
    BIM,
    FGSM,
    PGD,
    LessonAttack,
    Misclassification,
    TargetedMisclassification,
    robust_accuracy,
)
from keras_transfer.backbones import available_backbones, build_backbone, get_backbone_spec
from keras_transfer.calibration import apply_temperature, expected_calibration_error, fit_temperature
from keras_transfer.corruptions import CORRUPTIONS, CorruptionResult, corrupt, corruption_accuracy
from keras_transfer.data import load_cats_vs_dogs, load_folder, load_oxford_pets
from keras_transfer.explain import ExplainConfig, Explainer, Faithfulness, FaithfulnessConfig
from keras_transfer.export import export_saved_model, export_tflite
from keras_transfer.inference import LoadedImages, Predictions, load_images, predict, score
from keras_transfer.layers import (
    FeatureStandardization,
    ImagePreprocessing,
    InferenceBackbone,
    build_augmentation,
)
from keras_transfer.models import (
    build_classifier,
    build_ensemble,
    build_imagenet_classifier,
    class_probabilities,
    freeze_backbone,
    load_model,
    unfreeze_backbone,
)
from keras_transfer.training import TrainConfig, train
from keras_transfer.visualization import VisualizationConfig, visualize_classes

__version__ = "0.1.0"

__all__ = [
    "APGD",
    "BIM",
    "CORRUPTIONS",
    "CorruptionResult",
    "DatasetUnavailableError",
    "ExplainConfig",
    "Explainer",
    "FGSM",
    "Faithfulness",
    "FaithfulnessConfig",
    "FeatureStandardization",
    "ImagePreprocessing",
    "InferenceBackbone",
    "LessonAttack",
    "LoadedImages",
    "Misclassification",
    "PGD",
    "Predictions",
    "TargetedMisclassification",
    "TrainConfig",
    "VisualizationConfig",
    "WeightsUnavailableError",
    "apply_temperature",
    "available_backbones",
    "build_augmentation",
    "build_backbone",
    "build_classifier",
    "build_ensemble",
    "build_imagenet_classifier",
    "class_probabilities",
    "corrupt",
    "corruption_accuracy",
    "expected_calibration_error",
    "export_saved_model",
    "export_tflite",
    "fit_temperature",
    "freeze_backbone",
    "get_backbone_spec",
    "load_cats_vs_dogs",
    "load_folder",
    "load_images",
    "load_model",
    "load_oxford_pets",
    "predict",
    "robust_accuracy",
    "score",
    "train",
    "unfreeze_backbone",
    "visualize_classes",
]
