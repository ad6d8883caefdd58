"""What we know about each `keras.applications` base network, without importing TensorFlow.

The spec is validated (in the SDK, at admission and in the trainer) before any TensorFlow is loaded, so
the facts that validation needs live here as plain data: the smallest input each network accepts, the
sizes its ImageNet weights exist for, and where fine-tuning usually starts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BaseInfo:
    """Facts about one `keras.applications` constructor."""

    #: The `keras.applications` attribute that builds the network.
    name: str
    #: The `keras.applications` sub-module whose `preprocess_input` the network expects.
    preprocess_module: str
    #: Smallest square input Keras accepts for it (`include_top=False`).
    min_size: int
    #: Input sizes for which ImageNet weights exist; empty means any size >= `min_size`.
    imagenet_sizes: tuple[int, ...] = ()
    #: First layer (name) that trains when fine-tuning, unless the spec says otherwise.
    fine_tune_at: str | None = None


_BASES = [
    BaseInfo("MobileNetV2", "mobilenet_v2", 32, (96, 128, 160, 192, 224), "block_13_expand"),
    BaseInfo("MobileNet", "mobilenet", 32, (128, 160, 192, 224), "conv_dw_12"),
    BaseInfo("MobileNetV3Small", "mobilenet_v3", 32, (), "expanded_conv_9_expand"),
    BaseInfo("MobileNetV3Large", "mobilenet_v3", 32, (), "expanded_conv_12_expand"),
    BaseInfo("VGG16", "vgg16", 32, (), "block5_conv1"),
    BaseInfo("VGG19", "vgg19", 32, (), "block5_conv1"),
    BaseInfo("ResNet50", "resnet", 32, (), "conv5_block1_1_conv"),
    BaseInfo("ResNet101", "resnet", 32, (), "conv5_block1_1_conv"),
    BaseInfo("ResNet152", "resnet", 32, (), "conv5_block1_1_conv"),
    BaseInfo("ResNet50V2", "resnet_v2", 32, (), "conv5_block1_preact_bn"),
    BaseInfo("ResNet101V2", "resnet_v2", 32, (), "conv5_block1_preact_bn"),
    BaseInfo("ResNet152V2", "resnet_v2", 32, (), "conv5_block1_preact_bn"),
    BaseInfo("InceptionV3", "inception_v3", 75, (), "mixed9"),
    BaseInfo("InceptionResNetV2", "inception_resnet_v2", 75, (), "conv_7b"),
    BaseInfo("Xception", "xception", 71, (), "block14_sepconv1"),
    BaseInfo("DenseNet121", "densenet", 32, (), "conv5_block1_0_bn"),
    BaseInfo("DenseNet169", "densenet", 32, (), "conv5_block1_0_bn"),
    BaseInfo("DenseNet201", "densenet", 32, (), "conv5_block1_0_bn"),
    BaseInfo("NASNetMobile", "nasnet", 32, (224,), None),
    BaseInfo("NASNetLarge", "nasnet", 32, (331,), None),
    BaseInfo("EfficientNetB0", "efficientnet", 32, (), "block7a_expand_conv"),
    BaseInfo("EfficientNetB1", "efficientnet", 32, (), "block7a_expand_conv"),
    BaseInfo("EfficientNetB2", "efficientnet", 32, (), "block7a_expand_conv"),
    BaseInfo("EfficientNetB3", "efficientnet", 32, (), "block7a_expand_conv"),
    BaseInfo("EfficientNetV2B0", "efficientnet_v2", 32, (), "block6a_expand_conv"),
    BaseInfo("EfficientNetV2S", "efficientnet_v2", 32, (), "block6a_expand_conv"),
    BaseInfo("ConvNeXtTiny", "convnext", 32, (), "convnext_tiny_stage_3_block_0_depthwise_conv"),
]

#: Known base networks by their `keras.applications` name.
BASES: dict[str, BaseInfo] = {b.name: b for b in _BASES}

#: Largest input size we accept for any base (memory grows with its square).
MAX_IMAGE_SIZE = 1024

#: File suffixes that mark `model.base` as a saved Keras model rather than an applications name.
SAVED_MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def is_model_path(base: str) -> bool:
    """A base that is not an applications name is a saved model: a path or a URI."""
    return base not in BASES and ("/" in base or base.endswith(SAVED_MODEL_SUFFIXES))
