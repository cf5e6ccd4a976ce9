"""One trainer for every model kind (baseline, ABN, LFI-CAM, the segmenter, and any registered kind).

    result = train(TrainConfig(kind="lfi", backbone="resnet20", epochs=30, seed=0),
                   train_set, out_dir="runs/lfi-s0", eval_dataset=test_set)

Modules: ``config`` (what defines a run), ``loop`` (the training loop), ``state`` (resume
checkpoints, RNG, logs), ``schedule`` (the learning rate). Prediction and evaluation of a trained
model live in :mod:`camzoo.inference`, which the benchmark uses too.
"""

from ..data.transforms import augment_batch
from ..inference import evaluate, evaluate_segmentation, predict
from .config import RUNTIME_FIELDS, SCHEDULES, TrainConfig, TrainResult
from .loop import train, train_step
from .schedule import learning_rate
from .state import seed_everything

__all__ = ["RUNTIME_FIELDS", "SCHEDULES", "TrainConfig", "TrainResult", "augment_batch", "evaluate", "evaluate_segmentation",
           "learning_rate", "predict", "seed_everything", "train", "train_step"]
