"""Pretrain a small source network on one image set, for honest transfer tests and demos.

`python -m transferjob_trainer.pretrain --data DIR --out source.keras --epochs N [--size 32]` trains a
small CNN on DIR's train/val images and saves it. Its penultimate layer is named `features`, the
bring-your-own-base convention, so a TransferJob with `model.base: /path/source.keras` transfers exactly
what it learned: pretrain on digits 0-4, transfer to 5-9. `--epochs 0` saves the untrained network,
the "same architecture from scratch" baseline.
"""

from __future__ import annotations

import argparse
import json
import sys

import keras

from transferjob.models import DataSpec
from transferjob_trainer import modeling
from transferjob_trainer.layout import scan_layout
from transferjob_trainer.pipeline import eval_batches, image_dataset, shuffled_images, training_batches


def build_small_cnn(image_size: int, n_classes: int) -> keras.Model:
    """Three conv blocks, their flattened output as a layer named `features`, then the classifier.

    The features keep the spatial layout (flattened, not globally pooled): for digits, where a stroke
    is matters as much as what it is, and a linear head on position-aware features transfers well to
    new classes. The network takes raw 0-255 RGB images (the Rescaling is inside), as the
    bring-your-own-base convention asks.
    """
    image = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(image)
    for i, filters in enumerate((32, 64, 64), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.Flatten(name=modeling.FEATURES_LAYER)(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    output = keras.layers.Dense(n_classes, activation="softmax", name="classifier")(x)
    return keras.Model(image, output, name="small_cnn")


def pretrain(
    data_dir: str, out: str, epochs: int, image_size: int = 32, seed: int = 0, batch_size: int = 32
) -> dict[str, object]:
    """Train the small CNN on `data_dir` (train, validated on val) and save it to `out`."""
    keras.utils.set_random_seed(seed)
    layout = scan_layout(data_dir, DataSpec.model_validate({"source": {"hostPath": "/unused"}}))
    model = build_small_cnn(image_size, len(layout.classes))
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    val_accuracy = None
    if epochs > 0:
        train = image_dataset(layout.train, image_size, binary=False, cache=True)
        val = image_dataset(layout.val, image_size, binary=False, cache=True)
        history = model.fit(
            training_batches(
                shuffled_images(layout.train, image_size, binary=False, seed=seed, cached=train),
                batch_size,
                None,
            ),
            validation_data=eval_batches(val, batch_size),
            epochs=epochs,
            shuffle=False,  # the pipeline shuffles
            verbose=0,
        )
        val_accuracy = float(history.history["val_accuracy"][-1])
    model.save(out)
    return {"out": out, "classes": list(layout.classes), "epochs": epochs, "valAccuracy": val_accuracy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transferjob_trainer.pretrain", description=__doc__)
    parser.add_argument("--data", required=True, help="folder with train/ and val/ (a sub-folder per class)")
    parser.add_argument("--out", required=True, help="where to save the model (.keras)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs; 0 saves the untrained network")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    args = parser.parse_args(argv)
    summary = pretrain(args.data, args.out, args.epochs, args.size, args.seed, args.batch_size)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
