"""Figures of a training run, drawn from the files in its run folder.

The trainer writes history.csv (one row per epoch), metrics.json (its
evaluation of final.keras) and predictions.npz (images with final.keras's
predicted probabilities) into the run folder; scripts/evaluate.py writes the
same two for another model or split under names of their own (run_folder.py
names every file). This module reads them and draws matplotlib figures on
the Agg canvas, so no display is ever needed. Curves are the run's; the
other figures are one model's on one split, and their titles say which. It
imports TensorFlow only to reach remote paths (gs://, ram://), so plotting a
local run starts fast.
"""

import io
import os
import zipfile

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from cifar_tfrecord import files
from cifar_tfrecord import run_folder
from cifar_tfrecord.errors import UserInputError

# The columns the figures need; the trainer also writes images_per_second and
# epoch_seconds, which are read when present.
REQUIRED_COLUMNS = ('epoch', 'phase', 'loss', 'accuracy', 'val_loss', 'val_accuracy',
                    'learning_rate')
CURVE_METRICS = ('loss', 'accuracy')
FREEZE_PHASE = 'freeze'
FINE_TUNE_PHASE = 'fine_tune'
FINE_TUNE_LABEL = 'fine-tuning starts'
METRICS_KEYS = ('accuracy', 'class_names', 'per_class_accuracy', 'confusion_matrix')
PREDICTIONS_ARRAYS = ('images', 'labels', 'probabilities', 'class_names')
# What results name their model and split by; files from before they did lack them.
NAME_ARRAYS = ('model', 'split')
UNNAMED = 'not recorded'

DOTS_PER_INCH = 120
MISTAKE_COLOR = 'tab:red'


# ----------------------------------------------------------------------------
# Files, local or remote.


def _exists(path: str) -> bool:
    return files.gfile().exists(path) if files.is_remote(path) else os.path.exists(path)


def _is_folder(path: str) -> bool:
    return files.gfile().isdir(path) if files.is_remote(path) else os.path.isdir(path)


def _make_folders(path: str) -> None:
    if files.is_remote(path):
        files.gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def _read_bytes(path: str) -> bytes:
    with files.open_file(path, 'rb') as file:
        return file.read()


def _write_bytes(path: str, data: bytes) -> None:
    with files.open_file(path, 'wb') as file:
        file.write(data)


# ----------------------------------------------------------------------------
# Loading a run folder.


def _check_run_folder(model_dir: str) -> None:
    if not _exists(model_dir):
        raise UserInputError(f'{model_dir}: no such run folder')
    if not _is_folder(model_dir):
        raise UserInputError(f'{model_dir} is a file, not a run folder')


def load_history(model_dir: str) -> dict[str, np.ndarray]:
    """The per-epoch history of a run, one entry per epoch in epoch order.

    An epoch written twice (a resumed run) keeps its last row.

    Args:
        model_dir: The run folder holding history.csv.

    Returns:
        Column name -> array: `epoch` as int, `phase` as str, the numbers as
        float with NaN where a value was left empty (validation skipped).

    Raises:
        UserInputError: The folder or its history.csv is missing, empty or
            malformed.
    """
    _check_run_folder(model_dir)
    path = run_folder.path(model_dir, run_folder.HISTORY)
    if not _exists(path):
        raise UserInputError(f'no {run_folder.HISTORY} in {model_dir}: has this run started?')
    header, rows = run_folder.read_history(path)
    if not rows:
        raise UserInputError(f'{path} has no epochs yet: has this run finished an epoch?')
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise UserInputError(f'{path} lacks the columns {", ".join(missing)}')
    return _columns(header, _last_row_per_epoch(rows))


def _last_row_per_epoch(rows: list[tuple[int, dict[str, str]]]) -> list[dict[str, str]]:
    by_epoch = {}
    for _, row in rows:
        # A resumed run may repeat epochs: the later row is the one that counts.
        by_epoch[int(row['epoch'])] = row
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _columns(header: list[str], rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    history = {}
    for name in header:
        values = [row[name] for row in rows]
        if name == 'epoch':
            history[name] = np.array([int(value) for value in values])
        elif name in run_folder.HISTORY_NUMBER_COLUMNS:
            history[name] = np.array([run_folder.history_number(value) for value in values])
        else:
            history[name] = np.array(values, dtype=str)
    return history


def load_metrics(path: str) -> dict | None:
    """An evaluation (metrics.json or metrics-<model>-<split>.json), or None
    before it exists.

    Raises:
        UserInputError: the file is not valid JSON or lacks a field.
    """
    if not _exists(path):
        return None
    metrics = run_folder.read_json(path)
    _check_metrics(path, metrics)
    return metrics


def _check_metrics(path: str, metrics) -> None:
    if not isinstance(metrics, dict):
        raise UserInputError(f'{path}: expected a JSON object, found {type(metrics).__name__}')
    missing = [key for key in METRICS_KEYS if key not in metrics]
    if missing:
        raise UserInputError(f'{path} lacks {", ".join(missing)}')
    names = metrics['class_names']
    if not (isinstance(names, list) and names and all(isinstance(name, str) for name in names)):
        raise UserInputError(f'{path}: class_names must be a list of names')
    matrix = _number_array(path, 'confusion_matrix', metrics['confusion_matrix'])
    if matrix.shape != (len(names), len(names)):
        raise UserInputError(f'{path}: confusion_matrix has shape {matrix.shape}, expected '
                             f'{len(names)} x {len(names)}, one row and column per class')
    per_class = metrics['per_class_accuracy']
    if not isinstance(per_class, dict) or any(name not in per_class for name in names):
        raise UserInputError(f'{path}: per_class_accuracy must give every class in class_names')
    _number_array(path, 'per_class_accuracy', [per_class[name] for name in names])
    _number_array(path, 'accuracy', metrics['accuracy'])


def _number_array(path: str, key: str, value) -> np.ndarray:
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise UserInputError(f'{path}: {key} must hold numbers') from None


def load_predictions(path: str) -> dict | None:
    """Images with labels and predicted probabilities (predictions.npz or
    predictions-<model>-<split>.npz), or None before they exist.

    Returns:
        `images` (N x H x W x 3 uint8), `labels` (N ints), `probabilities`
        (N x classes floats), `class_names` (a list of str), and `model` and
        `split` (str, or None in files from before they were recorded).

    Raises:
        UserInputError: the file is unreadable or inconsistent.
    """
    if not _exists(path):
        return None
    try:
        with np.load(io.BytesIO(_read_bytes(path)), allow_pickle=False) as archive:
            missing = [name for name in PREDICTIONS_ARRAYS if name not in archive.files]
            if missing:
                raise UserInputError(f'{path} lacks the arrays {", ".join(missing)}')
            arrays = {name: archive[name] for name in PREDICTIONS_ARRAYS}
            arrays.update({name: str(archive[name]) if name in archive.files else None
                           for name in NAME_ARRAYS})
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserInputError(f'{path} is not a readable .npz file: {error}') from error
    arrays['class_names'] = [
        name.decode() if isinstance(name, bytes) else str(name)
        for name in arrays['class_names'].tolist()]
    _check_predictions(path, arrays)
    return arrays


def _check_predictions(path: str, arrays: dict) -> None:
    images, labels, probabilities = (
        arrays['images'], arrays['labels'], arrays['probabilities'])
    count, classes = len(images), len(arrays['class_names'])
    if images.ndim not in (3, 4) or labels.shape != (count,):
        raise UserInputError(f'{path}: expected images of N x height x width (x channels) '
                             f'and N labels, found {images.shape} and {labels.shape}')
    if probabilities.shape != (count, classes):
        raise UserInputError(f'{path}: probabilities have shape {probabilities.shape}, '
                             f'expected {count} x {classes} (images x class_names)')
    if not np.issubdtype(labels.dtype, np.integer) or np.any((labels < 0) | (labels >= classes)):
        raise UserInputError(f'{path}: labels must be class indices below {classes}')


# ----------------------------------------------------------------------------
# Figures.


def _new_figure(width: float, height: float, layout: str | None = 'constrained') -> Figure:
    figure = Figure(figsize=(width, height), layout=layout)
    # Agg draws in memory: no display, no pyplot state shared between figures.
    FigureCanvasAgg(figure)
    return figure


def _column(history: dict, name: str) -> np.ndarray:
    return np.asarray(history[name], dtype=float)


def _plot_series(axes, epochs: np.ndarray, values: np.ndarray, **style) -> None:
    """Draws the epochs that have a value; markers keep a single epoch visible."""
    present = np.isfinite(values)
    if present.any():
        axes.plot(epochs[present], values[present], marker='o', markersize=4, **style)


def _fine_tune_start(history: dict) -> float | None:
    """Where fine-tuning began, between two epochs, if the run had both phases."""
    phases = np.asarray(history['phase'], dtype=str)
    if not (np.any(phases == FREEZE_PHASE) and np.any(phases == FINE_TUNE_PHASE)):
        return None
    first_fine_tune_epoch = np.asarray(history['epoch'])[phases == FINE_TUNE_PHASE].min()
    return float(first_fine_tune_epoch) - 0.5


def _mark_fine_tuning(axes, history: dict) -> bool:
    start = _fine_tune_start(history)
    if start is not None:
        axes.axvline(start, color='gray', linestyle='--', label=FINE_TUNE_LABEL)
    return start is not None


def _format_epoch_axis(axes, epochs: np.ndarray) -> None:
    axes.set_xlabel('epoch')
    # min_n_ticks=1: a single epoch otherwise gets fractional ticks.
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    # Half an epoch of margin keeps a single epoch, and the phase line, in view.
    axes.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
    axes.grid(alpha=0.3)


def _format_metric_axis(axes, metric: str) -> None:
    axes.set_ylabel(metric)
    if metric == 'accuracy':
        axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))


def plot_curves(history: dict, metric: str) -> Figure:
    """Training and validation `metric` ('loss' or 'accuracy') per epoch.

    A dashed vertical line marks where fine-tuning began when the run had a
    frozen phase before it.
    """
    if metric not in CURVE_METRICS:
        raise ValueError(f'metric={metric!r}: use one of {", ".join(CURVE_METRICS)}')
    figure = _new_figure(7, 4.5)
    axes = figure.add_subplot()
    epochs = np.asarray(history['epoch'])
    _plot_series(axes, epochs, _column(history, metric), label='training')
    _plot_series(axes, epochs, _column(history, f'val_{metric}'), label='validation')
    _mark_fine_tuning(axes, history)
    _format_epoch_axis(axes, epochs)
    _format_metric_axis(axes, metric)
    axes.set_title(f'{metric.capitalize()} per epoch')
    axes.legend()
    return figure


def plot_learning_rate(history: dict) -> Figure:
    """The learning rate per epoch, on a log scale when every rate is positive."""
    figure = _new_figure(7, 4)
    axes = figure.add_subplot()
    epochs = np.asarray(history['epoch'])
    rates = _column(history, 'learning_rate')
    _plot_series(axes, epochs, rates, color='tab:green')
    present = rates[np.isfinite(rates)]
    if present.size and np.all(present > 0):
        axes.set_yscale('log')
    if _mark_fine_tuning(axes, history):
        axes.legend()
    _format_epoch_axis(axes, epochs)
    axes.set_ylabel('learning rate')
    axes.set_title('Learning rate per epoch')
    return figure


def _row_normalized(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    # A class absent from the split has an all-zero row, not a division by zero.
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def evaluation_title(model: str | None, split: str | None, count: int) -> str:
    """What a figure of results shows: 'final.keras on validation, 5,000 images'."""
    return f'{model or f"model {UNNAMED}"} on {split or f"split {UNNAMED}"}, {count:,} images'


def _metrics_title(metrics: dict) -> str:
    count = int(np.asarray(metrics['confusion_matrix']).sum())
    return evaluation_title(metrics.get('model'), metrics.get('split'), count)


def plot_confusion_matrix(metrics: dict) -> Figure:
    """The confusion matrix with each true-class row scaled to sum to 1."""
    names = list(metrics['class_names'])
    shares = _row_normalized(np.asarray(metrics['confusion_matrix'], dtype=float))
    figure = _new_figure(8, 7)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap='Blues', vmin=0, vmax=1)
    for (row, column), share in np.ndenumerate(shares):
        axes.text(column, row, '0' if share == 0 else f'{share:.2f}', ha='center',
                  va='center', fontsize=8, color='white' if share > 0.5 else 'black')
    positions = np.arange(len(names))
    axes.set_xticks(positions, names, rotation=45, ha='right', rotation_mode='anchor')
    axes.set_yticks(positions, names)
    axes.set_xlabel('predicted class')
    axes.set_ylabel('true class')
    axes.set_title(f'Confusion matrix of {_metrics_title(metrics)}\neach row sums to 1')
    figure.colorbar(image, ax=axes, shrink=0.8, label='share of the true class')
    return figure


def plot_per_class_accuracy(metrics: dict) -> Figure:
    """One horizontal bar per class, with the overall accuracy as a dashed line."""
    names = list(metrics['class_names'])
    accuracies = [float(metrics['per_class_accuracy'][name]) for name in names]
    overall = float(metrics['accuracy'])
    figure = _new_figure(7, 1.5 + 0.4 * len(names))
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    axes.barh(positions, accuracies, color='tab:blue')
    # The values sit in a column past 100%, where the overall line never crosses them.
    for position, accuracy in zip(positions, accuracies):
        axes.text(1.02, position, f'{accuracy:.1%}', va='center', fontsize=8)
    axes.axvline(overall, color=MISTAKE_COLOR, linestyle='--', label=f'overall {overall:.1%}')
    axes.text(overall, -0.75, f'overall {overall:.1%}', color=MISTAKE_COLOR, ha='center',
              va='center', fontsize=8, backgroundcolor='white')
    axes.set_yticks(positions, names)
    # First class on top, as in the confusion matrix; the space above is the line's label.
    axes.set_ylim(len(names) - 0.5, -1.2)
    axes.set_xlim(0, 1.12)
    axes.set_xticks(np.linspace(0, 1, 6))
    axes.xaxis.set_major_formatter(PercentFormatter(xmax=1))
    axes.set_xlabel('accuracy')
    axes.set_title(f'Accuracy per class of {_metrics_title(metrics)}')
    return figure


def select_sample_indices(probabilities, labels, count: int) -> np.ndarray:
    """Which images a sample grid shows, in order.

    Up to half are the most confident mistakes, most confident first; the
    rest are spread evenly over the other images, so the grid is the same on
    every call.

    Returns:
        Up to `count` distinct indices into `labels`.
    """
    if count < 1:
        raise ValueError(f'count={count}: a grid needs at least one image')
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels)
    confidences = probabilities.max(axis=1)
    mistakes = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    # Stable, so equal confidences keep file order and the choice is repeatable.
    mistakes = mistakes[np.argsort(-confidences[mistakes], kind='stable')]
    chosen = mistakes[:count // 2]
    others = np.setdiff1d(np.arange(len(labels)), chosen)
    wanted = count - len(chosen)
    if len(others) > wanted:
        others = others[np.arange(wanted) * len(others) // wanted]
    return np.concatenate([chosen, others]).astype(int)


def _draw_sample(axes, image: np.ndarray, true_name: str, predicted_name: str,
                 confidence: float) -> None:
    # Nearest keeps the 32 x 32 pixels sharp instead of blurring them.
    axes.imshow(image, interpolation='nearest', cmap='gray' if image.ndim == 2 else None)
    wrong = true_name != predicted_name
    axes.set_title(f'true: {true_name}\npred: {predicted_name} {confidence:.0%}',
                   fontsize=8, color=MISTAKE_COLOR if wrong else 'black')


def plot_samples(predictions: dict, columns: int = 8, rows: int = 4) -> Figure:
    """A grid of images titled with true and predicted class; mistakes in red.

    The grid starts with the most confident mistakes (`select_sample_indices`).
    """
    names = list(predictions['class_names'])
    probabilities = np.asarray(predictions['probabilities'])
    labels = np.asarray(predictions['labels'])
    indices = select_sample_indices(probabilities, labels, columns * rows)
    # A fixed layout, and no ticks: solving the layout of 32 axes took a second.
    figure = _new_figure(1.6 * columns, 1.9 * rows, layout=None)
    grid = figure.subplots(rows, columns, squeeze=False, subplot_kw={'xticks': [], 'yticks': []})
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.8 / (1.9 * rows),
                           wspace=0.15, hspace=0.45)
    for axes in grid.flat:
        axes.set_axis_off()
    for axes, index in zip(grid.flat, indices):
        predicted = int(probabilities[index].argmax())
        _draw_sample(axes, np.asarray(predictions['images'][index]), names[labels[index]],
                     names[predicted], float(probabilities[index, predicted]))
    title = evaluation_title(predictions.get('model'), predictions.get('split'), len(labels))
    figure.suptitle(f'Predictions of {title}: most confident mistakes first (in red)')
    return figure


def plot_comparison(histories: dict[str, dict], metric: str) -> Figure:
    """Several runs' `metric` per epoch: validation solid, training dashed.

    Args:
        histories: Run name (the legend entry) -> history of `load_history`.
        metric: 'loss' or 'accuracy'.
    """
    if metric not in CURVE_METRICS:
        raise ValueError(f'metric={metric!r}: use one of {", ".join(CURVE_METRICS)}')
    figure = _new_figure(8, 5)
    axes = figure.add_subplot()
    for number, (name, history) in enumerate(histories.items()):
        epochs = np.asarray(history['epoch'])
        color = f'C{number % 10}'
        _plot_series(axes, epochs, _column(history, f'val_{metric}'), color=color,
                     label=f'{name} validation')
        _plot_series(axes, epochs, _column(history, metric), color=color, linestyle='--',
                     alpha=0.6, label=f'{name} training')
    _format_epoch_axis(axes, np.concatenate(
        [np.asarray(history['epoch']) for history in histories.values()]))
    _format_metric_axis(axes, metric)
    axes.set_title(f'{metric.capitalize()} per epoch: validation solid, training dashed')
    axes.legend(fontsize=8)
    return figure


# ----------------------------------------------------------------------------
# Writing PNGs.


def run_figures(model_dir: str, model: str = run_folder.MODEL_OF_RECORD,
                split: str | None = None) -> dict[str, Figure]:
    """Every figure a run folder's files allow, by file name.

    The curves come from history.csv. The other figures are `model`'s on
    `split` (default: the trainer's split): for final.keras on the trainer's
    split they come from the trainer's metrics.json and predictions.npz, and
    keep their plain names; otherwise from the files scripts/evaluate.py
    wrote, and their names end in -<model>-<split>.

    Reads and checks every file before drawing, and prints one line for
    each group of the trainer's figures skipped because its file does not
    exist yet.

    Raises:
        UserInputError: A file of the run folder is missing or malformed.
    """
    history = load_history(model_dir)
    figures = {'loss.png': plot_curves(history, 'loss'),
               'accuracy.png': plot_curves(history, 'accuracy'),
               'learning_rate.png': plot_learning_rate(history)}
    trainer_metrics = load_metrics(run_folder.path(model_dir, run_folder.METRICS))
    trainer_split = trainer_metrics.get('split') if trainer_metrics else None
    if model == run_folder.MODEL_OF_RECORD and split in (None, trainer_split):
        figures.update(_trainer_figures(model_dir, trainer_metrics))
    else:
        figures.update(_evaluation_figures(model_dir, model, split or trainer_split))
    return figures


def _trainer_figures(model_dir: str, metrics: dict | None) -> dict[str, Figure]:
    """The figures of the trainer's evaluation, those whose files exist yet."""
    figures = {}
    if metrics is None:
        print(f'{model_dir}: no {run_folder.METRICS} yet, skipping confusion_matrix.png '
              'and per_class_accuracy.png')
    else:
        figures.update(_metrics_figures(metrics, ''))
    predictions = load_predictions(run_folder.path(model_dir, run_folder.PREDICTIONS))
    if predictions is None:
        print(f'{model_dir}: no {run_folder.PREDICTIONS} yet, skipping samples.png')
    else:
        figures['samples.png'] = plot_samples(predictions)
    return figures


def _evaluation_figures(model_dir: str, model: str, split: str | None) -> dict[str, Figure]:
    """The figures of the files scripts/evaluate.py wrote for a model and split."""
    if split is None:
        raise UserInputError(f'{model_dir} has no {run_folder.METRICS} yet to take the '
                             "trainer's split from: give --split")
    model_path = run_folder.model_path(model_dir, model)
    metrics_path = run_folder.evaluation_metrics(model_dir, model_path, split)
    predictions_path = run_folder.evaluation_predictions(model_dir, model_path, split)
    metrics = load_metrics(metrics_path)
    if metrics is None:
        raise _not_evaluated(metrics_path, model_dir, model, split)
    predictions = load_predictions(predictions_path)
    if predictions is None:
        raise _not_evaluated(predictions_path, model_dir, model, split)
    suffix = f'-{run_folder.model_label(model_path)}-{split}'
    return {**_metrics_figures(metrics, suffix), f'samples{suffix}.png': plot_samples(predictions)}


def _metrics_figures(metrics: dict, suffix: str) -> dict[str, Figure]:
    return {f'confusion_matrix{suffix}.png': plot_confusion_matrix(metrics),
            f'per_class_accuracy{suffix}.png': plot_per_class_accuracy(metrics)}


def _not_evaluated(missing: str, model_dir: str, model: str, split: str) -> UserInputError:
    """Names the missing file of an evaluation and the command that writes it."""
    return UserInputError(
        f'{missing} not found: python scripts/evaluate.py --model_dir={model_dir} '
        f'--model={model} --split={split} --records_dir={_records_dir_of(model_dir)} writes it')


def _records_dir_of(model_dir: str) -> str:
    """The records folder the run trained on, as its config.json says, if it does."""
    path = run_folder.path(model_dir, run_folder.CONFIG)
    if _exists(path):
        try:
            return run_folder.read_json(path)['config']['input']['records_dir']
        except (UserInputError, ValueError, KeyError, TypeError):
            pass  # Only a hint in a message: an unreadable config.json gets a placeholder.
    return 'RECORDS'


def _run_names(model_dirs: list[str]) -> list[str]:
    """Legend names: each folder's own name, or its whole path if two share it."""
    names = [os.path.basename(model_dir.rstrip('/')) or model_dir for model_dir in model_dirs]
    if len(set(names)) == len(names):
        return names
    if len(set(model_dirs)) < len(model_dirs):
        raise UserInputError(f'a run folder is listed twice in {",".join(model_dirs)}')
    return list(model_dirs)


def comparison_figures(model_dirs: list[str]) -> dict[str, Figure]:
    """compare_loss.png and compare_accuracy.png overlaying several runs."""
    if not model_dirs:
        raise UserInputError('no run folders to compare')
    histories = {name: load_history(model_dir)
                 for name, model_dir in zip(_run_names(model_dirs), model_dirs)}
    return {f'compare_{metric}.png': plot_comparison(histories, metric)
            for metric in CURVE_METRICS}


def _check_output_folder(output_dir: str) -> None:
    if _exists(output_dir) and not _is_folder(output_dir):
        raise UserInputError(f'{output_dir} is a file, not a folder for the figures')


def save_figures(figures: dict[str, Figure], output_dir: str) -> list[str]:
    """Writes each figure as output_dir/<name>; returns the paths written."""
    _check_output_folder(output_dir)
    _make_folders(output_dir)
    paths = []
    for name, figure in figures.items():
        path = os.path.join(output_dir, name)
        # Through bytes, so remote folders take the same path as local ones.
        buffer = io.BytesIO()
        figure.savefig(buffer, format='png', dpi=DOTS_PER_INCH)
        _write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def write_run_plots(model_dir: str, output_dir: str | None = None,
                    model: str = run_folder.MODEL_OF_RECORD,
                    split: str | None = None) -> list[str]:
    """Writes a run's figures (`run_figures`) into output_dir (default: the run folder).

    Returns:
        The paths written; none when any input is bad.
    """
    return save_figures(run_figures(model_dir, model, split), output_dir or model_dir)


def write_comparison(model_dirs: list[str], output_dir: str) -> list[str]:
    """Writes compare_loss.png and compare_accuracy.png; returns their paths."""
    return save_figures(comparison_figures(model_dirs), output_dir)


def write_plots(model_dir: str | None, compare_dirs: list[str], output_dir: str | None = None,
                model: str = run_folder.MODEL_OF_RECORD, split: str | None = None) -> list[str]:
    """A run's figures and a comparison of runs, checking all input first.

    Args:
        model_dir: The run whose figures to write, or None.
        compare_dirs: Runs to overlay in compare_*.png, or none.
        output_dir: Where to write; by default the run's figures go into
            model_dir and the comparison into the first of compare_dirs.
        model, split: Whose results the run's figures show (`run_figures`).

    Returns:
        The paths written; none when any input is bad.
    """
    batches = []
    if model_dir:
        batches.append((run_figures(model_dir, model, split), output_dir or model_dir))
    if compare_dirs:
        batches.append((comparison_figures(compare_dirs), output_dir or compare_dirs[0]))
    return [path for figures, folder in batches for path in save_figures(figures, folder)]
