"""The TransferJob trainer: runs one TransferJob spec with Keras and reports progress as JSON lines.

`python -m transferjob_trainer --spec FILE` (console script `transferjob-trainer`, the image's entrypoint)
reads a spec, checks the images, trains (feature extraction on cached features, or fine-tuning), tests
and exports.

Modules, in layers from the top down. A module imports only modules of lower layers (function-level
imports included), never one of its own layer, so there is no import cycle; a module that needs a
sibling moves up a layer. Layers 5-7 and `layout`, `ownership`, `paths` import no TensorFlow, so a bad
spec, bad data or an output another job owns fails in a second (`fs` reaches object stores through
obstore, not TensorFlow).

7. `__main__`: the CLI; maps every outcome to a final event and an exit code.
6. `run`: one run from spec file to exported model; checks spec, flags and data before TensorFlow.
5. `training`: the epoch loop and `train`, the run's steps from a checked layout to the finished event.
4. `export`: `model.keras` and the SavedModel; `features`: the base's feature pass, written to shards
   on disk as it runs and streamed back to the head;
   `pretrain`: a small source network for honest transfer tests and demos (an entry point of its own).
3. `head`: the head's traced epoch; `inference`: traced forward passes, reused by the export;
   `pipeline`: tf.data input pipelines and augmentation.
2. `checkpoint`: per-epoch checkpoints that make runs resumable;
   `layout`: finding and checking the images; `modeling`: base networks, the head, the end-to-end
   model, fine-tuning freezes; `ownership`: which TransferJob owns the output location (`owner.json`);
   `paths`: where a run reads and writes; `tensorboard_log`: learning curves.
1. `fs`: local paths and object stores (s3://, gs://, https://), their failures as `StorageError`;
   `metrics`, `stopping`: pure functions for test metrics and early stopping; `report`: the progress
   protocol on stdout, notes on stderr, the termination message.
0. `errors`: the failure reasons and whether a retry can help.
"""

__all__: list[str] = []
