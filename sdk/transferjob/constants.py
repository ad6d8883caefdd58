"""Names that the CRD, the operator, the SDK and the trainer must agree on, in one place."""

from __future__ import annotations

from typing import Final

GROUP = "transferjob.io"
VERSION = "v1alpha1"
#: Spelled out (not built from GROUP and VERSION) so type checkers see the Literal the models declare;
#: tests/unit/test_crd.py checks it agrees with them.
API_VERSION: Final = "transferjob.io/v1alpha1"
KIND: Final = "TransferJob"
PLURAL = "transferjobs"
SINGULAR = "transferjob"
SHORT_NAMES = ["tj"]
CRD_NAME = f"{PLURAL}.{GROUP}"

#: The TransferSweep resource (transferjob.sweeps): same group and version.
SWEEP_KIND: Final = "TransferSweep"
SWEEP_PLURAL = "transfersweeps"
SWEEP_SINGULAR = "transfersweep"
SWEEP_SHORT_NAMES = ["tsw"]
SWEEP_CRD_NAME = f"{SWEEP_PLURAL}.{GROUP}"

#: The trainer image a TransferJob runs unless `spec.resources.image` or the operator's --trainer-image
#: (TJ_TRAINER_IMAGE) says otherwise.
DEFAULT_TRAINER_IMAGE = "ghcr.io/transferjob/trainer:0.1.0"

#: Exit code the trainer uses for errors that no retry can fix (bad spec, missing, empty or corrupt
#: data). The operator's Job carries a podFailurePolicy that fails the Job at once on it.
EXIT_PERMANENT = 42

#: Where the trainer writes its final summary inside the container (Kubernetes' default path).
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
#: Kubernetes truncates termination messages at 4096 bytes; the trainer stays under this.
TERMINATION_MESSAGE_LIMIT = 4096

#: Labels and annotations the operator puts on what it creates.
LABEL_JOB_NAME = f"{GROUP}/job-name"
LABEL_MODE = f"{GROUP}/mode"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
#: On a sweep's trial TransferJobs: the sweep's name and the trial's index.
LABEL_SWEEP = f"{GROUP}/sweep"
LABEL_TRIAL = f"{GROUP}/trial"

#: How many epochs `.status.history` keeps (the newest ones); the full curve is in the output location.
HISTORY_LIMIT = 100

#: Above this many classes, `.status.test` keeps a bounded summary (the classes with the lowest recall,
#: no confusion matrix): a 1,000-class confusion matrix alone would pass etcd's 1.5 MiB object limit.
#: Every figure stays in the output's metrics.json.
STATUS_CLASS_LIMIT = 50
#: How many of the lowest-recall classes that summary keeps.
STATUS_WORST_CLASSES = 10

#: The file in a job's output folder (beside metrics.json) that names the test images the model got
#: wrong, each with its true and predicted class, the probability and a thumbnail; `tj report` shows them.
MISCLASSIFIED_FILE = "misclassified.json"
#: How many of them it keeps (the most confident mistakes first): a page of thumbnails, not the test set.
MISCLASSIFIED_LIMIT = 64

#: Files the trainer reads as images (what `keras.utils.image_dataset_from_directory` reads, and WebP,
#: which `tf.io.decode_image` decodes too) and `tj predict` picks out of a folder.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")

#: The exported SavedModel's default signature, the one TensorFlow Serving and KServe call when a request
#: names none: encoded images in (a batch of strings: JPEG, PNG, GIF, BMP or WebP files as they are),
#: decoded and resized as training did; every class out, most probable first.
SERVING_SIGNATURE = "serving_default"
SERVING_INPUT = "image_bytes"
#: Its outputs: `classes` [batch, classes] class names and `scores` [batch, classes] their probabilities.
SERVING_CLASSES = "classes"
SERVING_SCORES = "scores"
