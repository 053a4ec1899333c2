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

The JSON and CSV files are read back here (`read_json`, `read_history`):
a file that is not what the trainer writes is one line naming it and where,
never a guess.

No TensorFlow here: plots read run folders and start without it.
"""

import csv
import io
import json
import math
import os
import re

from cifar_tfrecord import files
from cifar_tfrecord.errors import UserInputError

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

# history.csv's columns, in the order the trainer writes them; those after
# `phase` hold numbers, empty where there is none (validation skipped).
HISTORY_COLUMNS = ('epoch', 'phase', 'loss', 'accuracy', 'val_loss', 'val_accuracy',
                   'learning_rate', 'images_per_second', 'epoch_seconds')
HISTORY_NUMBER_COLUMNS = HISTORY_COLUMNS[2:]

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


# ----------------------------------------------------------------------------
# Reading the files back.


def read_text(path: str) -> str:
    """A text file of a run, local or remote, in UTF-8."""
    with files.open_file(path, 'rb') as file:
        data = file.read()
    try:
        # utf-8-sig: a spreadsheet that re-saved the file may have added a BOM.
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as error:
        raise UserInputError(f'{path} is not UTF-8 text: {error}') from None


def read_json(path: str):
    """The JSON value of a file; one line naming it when it is not JSON."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise UserInputError(f'{path} is not valid JSON: {error}') from None


def read_history(path: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """history.csv: its columns, and each row's line number and values by column.

    Checked: a header, as many values in each row as columns, `epoch` a
    whole number from 1, the number columns numbers or empty. Other columns
    are kept as they are (the trainer's resume refuses them).

    Raises:
        UserInputError: naming the file, and the line at fault.
    """
    reader = csv.reader(io.StringIO(read_text(path)))
    try:
        lines = [(reader.line_num, values) for values in reader if values]
    except csv.Error as error:
        raise UserInputError(f'{path} line {reader.line_num}: {error}') from None
    if not lines:
        raise UserInputError(f'{path} is empty, without even its header')
    header = [name.strip() for name in lines[0][1]]
    rows = []
    for line_number, values in lines[1:]:
        if len(values) != len(header):
            raise UserInputError(
                f'{path} line {line_number}: {len(values)} values for {len(header)} columns')
        row = dict(zip(header, (value.strip() for value in values)))
        _check_history_row(path, line_number, row)
        rows.append((line_number, row))
    return header, rows


def _check_history_row(path: str, line_number: int, row: dict[str, str]) -> None:
    epoch = row.get('epoch')
    if epoch is not None and not (epoch.isdigit() and int(epoch) >= 1):
        raise UserInputError(
            f'{path} line {line_number}: epoch {epoch!r} is not a whole number from 1')
    for column in HISTORY_NUMBER_COLUMNS:
        if column in row:
            try:
                history_number(row[column])
            except ValueError:
                raise UserInputError(f'{path} line {line_number}: {column}={row[column]!r} is '
                                     'not a number') from None


def history_number(value: str) -> float:
    """A number of history.csv: NaN where it is empty."""
    return float(value) if value else math.nan
