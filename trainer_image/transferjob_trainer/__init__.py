"""The TransferJob trainer: runs one TransferJob spec with Keras and reports progress as JSON lines.

`python -m transferjob_trainer --spec FILE` (console script `transferjob-trainer`, the image's entrypoint)
reads a spec, checks the images, trains (feature extraction on cached features, or fine-tuning), tests
and exports. Modules, from the bottom up:

- `errors`: the failure reasons and whether a retry can help.
- `fs`: local paths and tf.io.gfile URIs behind one small interface.
- `paths`: where a run reads and writes, after the CLI's overrides (no TensorFlow).
- `layout`: finding and checking the images (no TensorFlow, so bad data fails in a second).
- `report`: the progress protocol on stdout and the termination message.
- `metrics`, `stopping`: pure functions for test metrics and early stopping.
- `pipeline`: tf.data input pipelines and augmentation.
- `modeling`: base networks, preprocessing, the head, the end-to-end model, fine-tuning freezes.
- `checkpoint`: per-epoch checkpoints and the feature cache that make runs resumable.
- `run`: one run from spec to exported model.
- `pretrain`: a small source network for honest transfer tests and demos.
"""

__all__: list[str] = []
