"""The layout of a run folder: every file a training run writes, named once.

    config.json        the resolved configuration, the records' fingerprint,
                       library versions and devices
    history.csv        one row per epoch, even across kills and resumes
    logs/              TensorBoard
    state.json         how far the run got: finished phases, saved epochs
    backup/            the last finished epoch's weights and optimizer state;
                       removed when the run finishes
    best.keras         the model of the best val_accuracy (`--model=best`)
    best.json          that accuracy and its epoch
    final.keras        the model after the last epoch: the run's model
    saved_model/       final.keras for TF Serving: uint8 32x32x3 images in,
                       probabilities out
    metrics.json       final.keras evaluated by the trainer
    predictions.npz    images of that split with final.keras's predictions
    metrics-<model>-<split>.json    written by scripts/evaluate.py, with
    predictions-<model>-<split>.npz its predictions, for plots
    submission-<model>.csv          written by scripts/predict.py
    image-predictions-<model>.csv   written by scripts/predict.py --images
    .worker-N/         a worker's private folder in a multi-worker job

The run's model is final.keras: the trainer evaluates and exports it, and
scripts/evaluate.py, predict.py and plot.py use it unless told
`--model=best` or `--model=PATH`. best.keras is chosen on the validation
split, so its validation accuracy is biased upward; final.keras is not chosen
on anything.

No TensorFlow here: plots read run folders and start without it.
"""

import os
import re

CONFIG = 'config.json'
HISTORY = 'history.csv'
LOGS = 'logs'
STATE = 'state.json'
BACKUP = 'backup'
BEST_MODEL = 'best.keras'
BEST_RECORD = 'best.json'
FINAL_MODEL = 'final.keras'
SAVED_MODEL = 'saved_model'
METRICS = 'metrics.json'
PREDICTIONS = 'predictions.npz'

# `--model=` names of the run's models, and the default.
MODELS = {'final': FINAL_MODEL, 'best': BEST_MODEL}
MODEL_OF_RECORD = 'final'


_RUN_FILES = (CONFIG, HISTORY, LOGS, STATE, BACKUP, BEST_MODEL, BEST_RECORD, FINAL_MODEL,
              SAVED_MODEL, METRICS, PREDICTIONS)
_RUN_FILE_PATTERN = re.compile(
    r'(metrics-.+\.json|predictions-.+\.npz|submission-.+\.csv|image-predictions-.+\.csv'
    r'|\.(worker|chief)-\d+)')


def is_run_file(name: str) -> bool:
    """Whether a name in a run folder is one a run writes (so --overwrite removes it)."""
    name = name.rstrip('/')
    return name in _RUN_FILES or _RUN_FILE_PATTERN.fullmatch(name) is not None


def path(model_dir: str, name: str) -> str:
    """A file of the run folder, by one of the names above."""
    return os.path.join(model_dir, name)


def model_path(model_dir: str, model: str) -> str:
    """The model file `--model` names: 'final', 'best', or a path of its own."""
    return path(model_dir, MODELS[model]) if model in MODELS else model


def model_label(model_path_: str) -> str:
    """A short name of a model file for file names: 'final', 'best', or its stem."""
    name = os.path.basename(model_path_.rstrip('/'))
    return name[:-len('.keras')] if name.endswith('.keras') else name


def evaluation_metrics(model_dir: str, model_path_: str, split: str) -> str:
    """Where scripts/evaluate.py writes a model's metrics on a split."""
    return path(model_dir, f'metrics-{model_label(model_path_)}-{split}.json')


def evaluation_predictions(model_dir: str, model_path_: str, split: str) -> str:
    """Where scripts/evaluate.py writes a model's predictions on a split."""
    return path(model_dir, f'predictions-{model_label(model_path_)}-{split}.npz')


def submission(model_dir: str, model_path_: str) -> str:
    """Where scripts/predict.py writes a model's Kaggle submission."""
    return path(model_dir, f'submission-{model_label(model_path_)}.csv')


def worker_folder(model_dir: str, task_type: str, task_id: int) -> str:
    """The private folder of a worker that is not the chief."""
    return path(model_dir, f'.{task_type}-{task_id}')


def phase_backup(model_dir: str, phase: str) -> str:
    """The backup folder of one training phase."""
    return os.path.join(model_dir, BACKUP, phase)


MODEL_FLAG_HELP = ('The model: final (the run\'s model), best (best val_accuracy, chosen on '
                   'validation), or a path to a .keras file.')


def model_name(model: str) -> str:
    """What results record as their model: 'final.keras', 'best.keras', or the path given."""
    return MODELS.get(model, model)


def images_predictions(model_dir: str, model_path_: str) -> str:
    """Where scripts/predict.py --images writes a model's classes of your own images."""
    return path(model_dir, f'image-predictions-{model_label(model_path_)}.csv')
