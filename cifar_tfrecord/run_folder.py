"""The run folder: every file a training run writes, named once, and how far the run got.

    config.json        the configuration, what `auto` resolved to, the records'
                       fingerprint, library versions, devices, the command
    history.csv        one row per epoch, even across kills and resumes
    logs/              TensorBoard
    state.json         how far the run got: epochs done, their backup, finished
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

The run's model is final.keras: the trainer evaluates and exports it, and scripts/evaluate.py,
predict.py and plot.py use it unless told `--model=best` or `--model=PATH`. best.keras is
chosen on the validation split, so its validation accuracy is biased upward.

`RunFolder` reads and writes the run's state; every file is written whole
(`files.write_atomically`), so one that is not what the trainer writes was edited or
damaged since: it is refused in one line naming it, never guessed at.

No TensorFlow here: plots read run folders and start without it.
"""

import csv
import dataclasses
import io
import math
import os
import re
from typing import Callable

import h5py

from cifar_tfrecord import faults
from cifar_tfrecord import files
from cifar_tfrecord.config import TrainConfig
from cifar_tfrecord.errors import UserInputError, first_line

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

# `--model=` names of the run's models; final is the default.
MODELS = {'final': FINAL_MODEL, 'best': BEST_MODEL}

# Flags a resumed run may change: they do not change what it computes.
# --records_dir may name another copy of the same records; the records'
# fingerprint is compared instead.
RESUME_NEUTRAL_FLAGS = ('records_dir', 'model_dir', 'cache', 'verify_checksums',
                        'export_saved_model', 'overwrite')
START_AFRESH = 'pass --overwrite to start afresh, or choose another --model_dir'

_RUN_FILES = (CONFIG, HISTORY, LOGS, STATE, BACKUP, BEST_MODEL, BEST_RECORD, FINAL_MODEL,
              SAVED_MODEL, METRICS, PREDICTIONS)
_RUN_FILE_PATTERN = re.compile(
    r'(metrics-.+\.json|predictions-.+\.npz|submission-.+\.csv|image-predictions-.+\.csv'
    r'|\.(worker|chief)-\d+)')
# Files that make a folder a run's, should its config.json be missing.
_RUN_EVIDENCE = (STATE, HISTORY, BEST_MODEL, FINAL_MODEL)


# --- What the JSON files hold.


@dataclasses.dataclass(frozen=True)
class RunState:
    """state.json: epochs finished, the backup of the last (relative to the
    run folder), and whether the outputs were written after the last epoch."""
    epochs_done: int = 0
    phase: str | None = None
    backup: str | None = None
    finished: bool = False


@dataclasses.dataclass(frozen=True)
class BestRecord:
    """best.json: the val_accuracy of best.keras, and its epoch."""
    val_accuracy: float
    epoch: int


@dataclasses.dataclass(frozen=True)
class Metrics:
    """metrics.json, and what scripts/evaluate.py writes: one model on one split."""
    model: str
    split: str
    examples: int
    accuracy: float
    loss: float
    class_names: tuple[str, ...]
    per_class_accuracy: dict[str, float]
    confusion_matrix: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class TrainedOn:
    """The records a run trained on."""
    fingerprint: str
    class_names: tuple[str, ...]
    records_dir: str


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a command line was made of: its flag files, with their text, and
    the flags it gave besides (which override the files' when they come later)."""
    flagfiles: dict[str, str]
    flags: tuple[str, ...]

    @classmethod
    def of(cls, command_line: list[str]) -> 'Recipe':
        flagfiles, flags_given = {}, []
        arguments = iter(command_line[1:])
        for argument in arguments:
            if argument == '--flagfile':
                argument = '--flagfile=' + next(arguments, '')
            if argument.startswith('--flagfile='):
                path = argument.split('=', 1)[1]
                flagfiles[path] = files.read_text(path)
            else:
                flags_given.append(argument)
        return cls(flagfiles, tuple(flags_given))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """config.json. `mixed_precision` and `jit_compile` are what the flags
    resolved to on the machine that trained (`auto` differs between machines)."""
    config: TrainConfig
    records: TrainedOn
    mixed_precision: str
    jit_compile: bool
    strategy: str
    replicas: int
    versions: dict[str, str]
    devices: tuple[str, ...]
    command: tuple[str, ...]
    recipe: Recipe


# --- Names.


def is_run_file(name: str) -> bool:
    """Whether a name in a run folder is one a run writes (so --overwrite removes it)."""
    return name in _RUN_FILES or _RUN_FILE_PATTERN.fullmatch(name) is not None


def model_path(model_dir: str, model: str) -> str:
    """The model file `--model` names: 'final', 'best', or a path of its own."""
    return os.path.join(model_dir, MODELS[model]) if model in MODELS else model


def model_name(model: str) -> str:
    """What results record as their model: 'final.keras', 'best.keras', or the path given."""
    return MODELS.get(model, model)


def model_label(model_path_: str) -> str:
    """A short name of a model file for file names: 'final', 'best', or its stem."""
    return os.path.basename(model_path_.rstrip('/')).removesuffix('.keras')


def evaluation_metrics(model_dir: str, model_path_: str, split: str) -> str:
    """Where scripts/evaluate.py writes a model's metrics on a split."""
    return os.path.join(model_dir, f'metrics-{model_label(model_path_)}-{split}.json')


def evaluation_predictions(model_dir: str, model_path_: str, split: str) -> str:
    """Where scripts/evaluate.py writes a model's predictions on a split."""
    return os.path.join(model_dir, f'predictions-{model_label(model_path_)}-{split}.npz')


def submission(model_dir: str, model_path_: str) -> str:
    """Where scripts/predict.py writes a model's Kaggle submission."""
    return os.path.join(model_dir, f'submission-{model_label(model_path_)}.csv')


def images_predictions(model_dir: str, model_path_: str) -> str:
    """Where scripts/predict.py --images writes a model's classes of your own images."""
    return os.path.join(model_dir, f'image-predictions-{model_label(model_path_)}.csv')


def worker_folder(model_dir: str, task_type: str, task_id: int) -> str:
    """The private folder of a worker that is not the chief."""
    return os.path.join(model_dir, f'.{task_type}-{task_id}')


# --- Files read by several modules.


def read_run_config(model_dir: str) -> RunConfig:
    """config.json, every key checked, and its configuration valid."""
    path = os.path.join(model_dir, CONFIG)
    saved = files.read_dataclass(path, RunConfig)
    try:
        saved.config.validate()
    except ValueError as error:
        raise UserInputError(f'{path}: config holds {error}') from None
    return saved


def read_metrics(path: str) -> Metrics:
    """A metrics file, checked: every key, and one row and column per class."""
    metrics = files.read_dataclass(path, Metrics)
    classes = len(metrics.class_names)
    if any(len(row) != classes for row in metrics.confusion_matrix) or (
            len(metrics.confusion_matrix) != classes):
        raise UserInputError(f'{path}: confusion_matrix must have one row and one column '
                             f'for each of the {classes} class_names')
    if set(metrics.per_class_accuracy) != set(metrics.class_names):
        raise UserInputError(f'{path}: per_class_accuracy must name the class_names, each once')
    return metrics


def read_history(path: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """history.csv: its columns, and each row's line number and values by column.

    Refused in one line naming the line at fault unless it has a header, a value per
    column in each row, `epoch` a whole number from 1, numbers or nothing in the rest.
    """
    reader = csv.reader(io.StringIO(files.read_text(path)))
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
        try:
            history_number(row.get(column, ''))
        except ValueError:
            raise UserInputError(f'{path} line {line_number}: {column}={row[column]!r} is '
                                 'not a number') from None


def history_number(value: str) -> float:
    """A number of history.csv: NaN where it is empty."""
    return float(value) if value else math.nan


# --- The run's state.


class RunFolder:
    """A run folder: its files by name, and the state a run resumes from.

    A worker that is not the chief writes a folder of its own but resumes from the
    chief's (`chief_dir`), so every worker resumes at the same epoch and weights.
    """

    def __init__(self, model_dir: str, chief_dir: str | None = None):
        self.model_dir = model_dir
        self.chief_dir = chief_dir or model_dir

    def path(self, name: str) -> str:
        return os.path.join(self.model_dir, name)

    def chief_path(self, name: str) -> str:
        return os.path.join(self.chief_dir, name)

    def exists(self, name: str) -> bool:
        return files.exists(self.path(name))

    # --- Resuming.

    def resume(self, config: TrainConfig, mixed_precision: str, jit_compile: bool,
               fingerprint: str) -> RunState:
        """How far an earlier run here got; refuses, before anything is written, a run
        of other result-changing flags, `auto` resolutions or records, a file the rerun
        would misread, or a run without config.json. `--overwrite` starts afresh."""
        if config.overwrite or not self._holds_run():
            return RunState()
        saved = _refused_unless_whole(read_run_config, self.model_dir)
        changes = changed_settings(saved, config, mixed_precision, jit_compile, fingerprint)
        if changes:
            raise UserInputError(
                f'{self.model_dir} holds a run with other settings: {"; ".join(changes)}. '
                f'Rerun with its flags to resume, or {START_AFRESH}')
        return _refused_unless_whole(self.check_resumable)

    def _holds_run(self) -> bool:
        if self.exists(CONFIG):
            return True
        evidence = [name for name in _RUN_EVIDENCE if self.exists(name)]
        if evidence:
            raise UserInputError(f'{self.path(CONFIG)} is missing, yet {self.model_dir} holds '
                                 f'a run ({", ".join(evidence)}): {START_AFRESH}')
        return False

    def check_resumable(self) -> RunState:
        """The state to resume from, once every file the rerun reads or
        rewrites is checked: state.json, history.csv, best.json, the backup."""
        state = self.read_state()
        self._check_history(state)
        if self.exists(BEST_RECORD):
            files.read_dataclass(self.path(BEST_RECORD), BestRecord)
        if state.backup is not None and not state.finished:
            backup = self.path(state.backup)
            if files.exists(backup):
                _check_hdf5(backup)
            elif not self.exists(FINAL_MODEL):
                raise UserInputError(f'{self.path(STATE)} names the backup {state.backup}, '
                                     'which is missing')
        return state

    def _check_history(self, state: RunState) -> None:
        """history.csv has only the trainer's columns, and a row for every epoch done."""
        path = self.path(HISTORY)
        if not files.exists(path):
            if state.epochs_done:
                raise UserInputError(f'{path} is missing, yet {self.path(STATE)} says '
                                     f'{state.epochs_done} epochs are done')
            return
        header, rows = read_history(path)
        if 'epoch' not in header or any(column not in HISTORY_COLUMNS for column in header):
            raise UserInputError(f"{path}: the columns are not the trainer's "
                                 f'({", ".join(HISTORY_COLUMNS)}), its header is '
                                 f'{",".join(header)}')
        epochs = {int(row['epoch']) for _, row in rows}
        missing = [epoch for epoch in range(1, state.epochs_done + 1) if epoch not in epochs]
        if missing:
            raise UserInputError(f'{path} has no row for epoch {missing[0]}, which '
                                 f'{self.path(STATE)} says is done')

    def read_state(self) -> RunState:
        """The chief's state.json, checked, or a fresh run's when there is none."""
        path = self.chief_path(STATE)
        if not files.exists(path):
            return RunState()
        state = files.read_dataclass(path, RunState)
        if state.epochs_done < 0:
            raise UserInputError(f'{path}: epochs_done is {state.epochs_done}, not a count')
        if state.backup is not None and os.path.dirname(state.backup) != BACKUP:
            raise UserInputError(f'{path}: backup is {state.backup!r}, not a file of {BACKUP}/')
        return state

    def backup_to_load(self, state: RunState) -> str:
        """The weights a resumed run loads: the chief's backup, or, once the
        run's outputs began, final.keras, which holds the same weights."""
        path = self.chief_path(state.backup)
        return path if files.exists(path) else self.chief_path(FINAL_MODEL)

    # --- Writing, epoch by epoch.

    def write_config(self, run_config: RunConfig) -> None:
        files.write_dataclass(self.path(CONFIG), run_config)

    def append_history(self, row: dict) -> None:
        """A row of history.csv, replacing any of the same or a later epoch:
        a resumed run rewrites the epochs it redoes, so none is doubled or lost."""
        rows = [old for old in self.history_rows() if int(old['epoch']) < row['epoch']]
        rows.append({key: '' if value is None else value for key, value in row.items()})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        files.write_atomically(self.path(HISTORY), buffer.getvalue())

    def history_rows(self) -> list[dict[str, str]]:
        if not self.exists(HISTORY):
            return []
        return [row for _, row in read_history(self.path(HISTORY))[1]]

    def best_accuracy(self) -> float:
        """The val_accuracy best.keras has in the chief's folder, or -inf."""
        if all(files.exists(self.chief_path(name)) for name in (BEST_MODEL, BEST_RECORD)):
            return files.read_dataclass(self.chief_path(BEST_RECORD), BestRecord).val_accuracy
        return -math.inf

    def save_best(self, record: BestRecord, write_model: Callable[[str], None]) -> None:
        """best.keras, then best.json, which a resumed run reads to know what to beat."""
        files.save_atomically(self.path(BEST_MODEL), write_model)
        files.write_dataclass(self.path(BEST_RECORD), record)

    def save_backup(self, epoch: int, phase: str, write_weights: Callable[[str], None]) -> None:
        """Epoch `epoch`'s backup, then state.json naming it, then older backups removed:
        a kill at any moment leaves state.json naming a whole backup, or none."""
        name = os.path.join(BACKUP, f'epoch-{epoch:04d}.weights.h5')
        files.save_atomically(self.path(name), write_weights)
        faults.reached('backup_written')
        self.write_state(RunState(epochs_done=epoch, phase=phase, backup=name))
        for old in files.listdir(self.path(BACKUP)):
            if os.path.join(BACKUP, old) != name:
                files.remove(self.path(os.path.join(BACKUP, old)))
        faults.reached('epoch_saved')

    def write_state(self, state: RunState) -> None:
        files.write_dataclass(self.path(STATE), state)

    def mark_finished(self) -> None:
        """Marks the run finished, then removes its backup: a kill before the
        mark reruns the outputs, from final.keras."""
        self.write_state(dataclasses.replace(self.read_state(), finished=True))
        if self.exists(BACKUP):
            files.remove(self.path(BACKUP))

    # --- Starting and stopping.

    def prepare(self, start_afresh: bool) -> None:
        """Creates the folder; with `start_afresh` first removes the run files
        of a run before (and nothing else); a worker's folder always starts empty."""
        if self.model_dir != self.chief_dir and files.exists(self.model_dir):
            files.remove(self.model_dir)  # Left by a killed worker; never read.
        elif start_afresh and files.exists(self.model_dir):
            for name in filter(is_run_file, files.listdir(self.model_dir)):
                files.remove(self.path(name))
        files.makedirs(self.model_dir)

    def remove_partial_files(self) -> None:
        """What an interruption cut short: harmless to a resumed run, which
        writes its own, but nothing is to be left half written."""
        for folder in (self.model_dir, self.path(BACKUP)):
            files.remove_partial_files(folder)


def changed_settings(saved: RunConfig, config: TrainConfig, mixed_precision: str,
                     jit_compile: bool, fingerprint: str) -> list[str]:
    """What differs between a saved run and this one, in a phrase each: the
    flags that change the result, what `auto` resolved to, the records."""
    old, new = _flat_fields(saved.config), _flat_fields(config)
    changes = [f'--{name}={new[name]} (the run has {old[name]})' for name in new
               if name not in RESUME_NEUTRAL_FLAGS and old[name] != new[name]]
    for name, value, saved_value in (('mixed_precision', mixed_precision, saved.mixed_precision),
                                     ('jit_compile', jit_compile, saved.jit_compile)):
        if value != saved_value:
            flag = 'auto' if new[name] is None else new[name]
            changes.append(f'--{name}={flag} resolves to {value} here (the run trained '
                           f'with {saved_value})')
    if fingerprint != saved.records.fingerprint:
        changes.append(f'--records_dir={config.input.records_dir} holds other records '
                       f'(fingerprint {fingerprint[:12]}, the run has '
                       f'{saved.records.fingerprint[:12]})')
    return changes


def _flat_fields(config) -> dict:
    """Flag name -> value of a config, nested configs included."""
    flat = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        flat.update(_flat_fields(value) if dataclasses.is_dataclass(value)
                    else {field.name: value})
    return flat


def _refused_unless_whole(read, *arguments):
    """`read(*arguments)`, its UserInputError saying how to go on."""
    try:
        return read(*arguments)
    except UserInputError as error:
        raise UserInputError(f'{error}; {START_AFRESH}') from None


def _check_hdf5(path: str) -> None:
    """Refuses a backup that is no HDF5 file before anything is rewritten:
    Keras reads it only once the model is built and compiled."""
    try:
        with files.open_file(path, 'rb') as file, h5py.File(file, 'r'):
            pass
    except (OSError, ValueError) as error:
        raise UserInputError(f"{path} cannot be read as this run's weights "
                             f'({first_line(str(error))})') from None
