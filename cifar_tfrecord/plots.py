"""Figures of a training run from its run folder, drawn on the Agg canvas (no display).

The curves are the run's; the other figures are one model's on one split, as
their titles say. TensorFlow is imported only for remote paths (gs://,
ram://), so plotting a local run starts fast.
"""

import contextlib
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
FREEZE_PHASE, FINE_TUNE_PHASE = 'freeze', 'fine_tune'
FINE_TUNE_LABEL = 'fine-tuning starts'
PREDICTIONS_ARRAYS = ('images', 'labels', 'probabilities', 'class_names', 'model', 'split')

DOTS_PER_INCH = 120
MISTAKE_COLOR = 'tab:red'


# ----------------------------------------------------------------------------
# Loading a run folder.


def load_history(model_dir: str) -> dict[str, np.ndarray]:
    """history.csv of a run as column name -> array, one entry per epoch in epoch
    order (an epoch written twice keeps its last row): `epoch` int, `phase` str,
    the numbers float, NaN where left empty (validation skipped)."""
    if not files.exists(model_dir):
        raise UserInputError(f'{model_dir}: no such run folder')
    if not files.isdir(model_dir):
        raise UserInputError(f'{model_dir} is a file, not a run folder')
    path = os.path.join(model_dir, run_folder.HISTORY)
    if not files.exists(path):
        raise UserInputError(f'no {run_folder.HISTORY} in {model_dir}: has this run started?')
    header, rows = run_folder.read_history(path)
    if not rows:
        raise UserInputError(f'{path} has no epochs yet: has this run finished an epoch?')
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise UserInputError(f'{path} lacks the columns {", ".join(missing)}')
    by_epoch = {int(row['epoch']): row for _, row in rows}
    rows = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    return {name: _column_array(name, [row[name] for row in rows]) for name in header}


def _column_array(name: str, values: list[str]) -> np.ndarray:
    if name == 'epoch':
        return np.array([int(value) for value in values])
    if name in run_folder.HISTORY_NUMBER_COLUMNS:
        return np.array([run_folder.history_number(value) for value in values])
    return np.array(values, dtype=str)


def load_metrics(path: str) -> run_folder.Metrics | None:
    """A metrics file, checked (`run_folder.read_metrics`), or None before it exists."""
    return run_folder.read_metrics(path) if files.exists(path) else None


def load_predictions(path: str) -> dict | None:
    """A predictions file, checked, or None before it exists: `images` (N x H x W
    (x 3) uint8), `labels` (N ints), `probabilities` (N x classes), `class_names`
    (a list of str), and the `model` and `split` (str) they are of."""
    if not files.exists(path):
        return None
    try:
        with np.load(io.BytesIO(files.read_bytes(path)), allow_pickle=False) as archive:
            missing = [name for name in PREDICTIONS_ARRAYS if name not in archive.files]
            if missing:
                raise UserInputError(f'{path} lacks the arrays {", ".join(missing)}')
            arrays = {name: archive[name] for name in PREDICTIONS_ARRAYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserInputError(f'{path} is not a readable .npz file: {error}') from error
    arrays['class_names'] = [str(name) for name in arrays['class_names'].tolist()]
    arrays['model'], arrays['split'] = str(arrays['model']), str(arrays['split'])
    images, labels, probabilities = arrays['images'], arrays['labels'], arrays['probabilities']
    count, classes = len(images), len(arrays['class_names'])
    if images.ndim not in (3, 4) or labels.shape != (count,):
        raise UserInputError(f'{path}: expected images of N x height x width (x channels) '
                             f'and N labels, found {images.shape} and {labels.shape}')
    if probabilities.shape != (count, classes):
        raise UserInputError(f'{path}: probabilities have shape {probabilities.shape}, '
                             f'expected {count} x {classes} (images x class_names)')
    if not np.issubdtype(labels.dtype, np.integer) or np.any((labels < 0) | (labels >= classes)):
        raise UserInputError(f'{path}: labels must be class indices below {classes}')
    return arrays


# ----------------------------------------------------------------------------
# Figures.


def _new_figure(width: float, height: float, layout: str | None = 'constrained') -> Figure:
    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)  # Agg draws in memory: no display, no pyplot state shared.
    return figure


def _epoch_axes(width: float, height: float, epochs: np.ndarray, title: str, quantity: str):
    """A figure, and its axes of `quantity` per epoch over `epochs`."""
    figure = _new_figure(width, height)
    axes = figure.add_subplot(title=title, xlabel='epoch', ylabel=quantity)
    # min_n_ticks=1: a single epoch otherwise gets fractional ticks.
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    # Half an epoch of margin keeps a single epoch, and the phase line, in view.
    axes.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
    axes.grid(alpha=0.3)
    if quantity == 'accuracy':
        axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    return figure, axes


def _check_metric(metric: str) -> None:
    if metric not in CURVE_METRICS:
        raise ValueError(f'metric={metric!r}: use one of {", ".join(CURVE_METRICS)}')


def _plot_series(axes, epochs: np.ndarray, values: np.ndarray, **style) -> None:
    """Draws the epochs that have a value; markers keep a single epoch visible."""
    present = np.isfinite(values)
    if present.any():
        axes.plot(epochs[present], values[present], marker='o', markersize=4, **style)


def _mark_fine_tuning(axes, history: dict) -> bool:
    """A dashed line between two epochs where fine-tuning began, if the run had both phases."""
    phases = history['phase']
    if not (np.any(phases == FREEZE_PHASE) and np.any(phases == FINE_TUNE_PHASE)):
        return False
    start = history['epoch'][phases == FINE_TUNE_PHASE].min() - 0.5
    axes.axvline(start, color='gray', linestyle='--', label=FINE_TUNE_LABEL)
    return True


def plot_curves(history: dict, metric: str) -> Figure:
    """Training and validation `metric` ('loss' or 'accuracy') per epoch; a dashed
    line marks where fine-tuning began when the run had a frozen phase before it."""
    _check_metric(metric)
    epochs = history['epoch']
    figure, axes = _epoch_axes(7, 4.5, epochs, f'{metric.capitalize()} per epoch', metric)
    _plot_series(axes, epochs, history[metric], label='training')
    _plot_series(axes, epochs, history[f'val_{metric}'], label='validation')
    _mark_fine_tuning(axes, history)
    axes.legend()
    return figure


def plot_learning_rate(history: dict) -> Figure:
    """The learning rate per epoch, on a log scale when every rate is positive."""
    rates = history['learning_rate']
    figure, axes = _epoch_axes(7, 4, history['epoch'], 'Learning rate per epoch',
                               'learning rate')
    _plot_series(axes, history['epoch'], rates, color='tab:green')
    present = rates[np.isfinite(rates)]
    if present.size and np.all(present > 0):
        axes.set_yscale('log')
    if _mark_fine_tuning(axes, history):
        axes.legend()
    return figure


def plot_comparison(histories: dict[str, dict], metric: str) -> Figure:
    """Several runs' `metric` ('loss' or 'accuracy') per epoch, validation solid,
    training dashed; `histories` maps each legend name to its `load_history`."""
    _check_metric(metric)
    epochs = np.concatenate([history['epoch'] for history in histories.values()])
    figure, axes = _epoch_axes(
        8, 5, epochs, f'{metric.capitalize()} per epoch: validation solid, training dashed', metric)
    for number, (name, history) in enumerate(histories.items()):
        color = f'C{number % 10}'
        _plot_series(axes, history['epoch'], history[f'val_{metric}'], color=color,
                     label=f'{name} validation')
        _plot_series(axes, history['epoch'], history[metric], color=color, linestyle='--',
                     alpha=0.6, label=f'{name} training')
    axes.legend(fontsize=8)
    return figure


def evaluation_title(model: str, split: str, count: int) -> str:
    """What a figure of results shows: 'final.keras on validation, 5,000 images'."""
    return f'{model} on {split}, {count:,} images'


def plot_confusion_matrix(metrics: run_folder.Metrics) -> Figure:
    """The confusion matrix with each true-class row scaled to sum to 1."""
    names = list(metrics.class_names)
    counts = np.asarray(metrics.confusion_matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    # A class absent from the split has an all-zero row, not a division by zero.
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
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
    title = evaluation_title(metrics.model, metrics.split, metrics.examples)
    axes.set_title(f'Confusion matrix of {title}\neach row sums to 1')
    figure.colorbar(image, ax=axes, shrink=0.8, label='share of the true class')
    return figure


def plot_per_class_accuracy(metrics: run_folder.Metrics) -> Figure:
    """One horizontal bar per class, with the overall accuracy as a dashed line."""
    names = list(metrics.class_names)
    accuracies = [metrics.per_class_accuracy[name] for name in names]
    overall = metrics.accuracy
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
    title = evaluation_title(metrics.model, metrics.split, metrics.examples)
    axes.set_title(f'Accuracy per class of {title}')
    return figure


def select_sample_indices(probabilities, labels, count: int) -> np.ndarray:
    """Up to `count` distinct indices of the images a sample grid shows, in order:
    up to half the most confident mistakes, most confident first; the rest
    spread evenly over the other images, so every call gives the same grid."""
    if count < 1:
        raise ValueError(f'count={count}: a grid needs at least one image')
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
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


def plot_samples(predictions: dict, columns: int = 8, rows: int = 4) -> Figure:
    """A grid of images titled with true and predicted class, mistakes in red,
    the most confident first (`select_sample_indices`)."""
    names = predictions['class_names']
    probabilities, labels = predictions['probabilities'], predictions['labels']
    indices = select_sample_indices(probabilities, labels, columns * rows)
    # A fixed layout, and no ticks: solving the layout of 32 axes took a second.
    figure = _new_figure(1.6 * columns, 1.9 * rows, layout=None)
    grid = figure.subplots(rows, columns, squeeze=False,
                           subplot_kw={'xticks': [], 'yticks': [], 'frame_on': False})
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.8 / (1.9 * rows),
                           wspace=0.15, hspace=0.45)
    for axes, index in zip(grid.flat, indices):
        image = predictions['images'][index]
        true_name, predicted = names[labels[index]], int(probabilities[index].argmax())
        # Nearest keeps the 32 x 32 pixels sharp instead of blurring them.
        axes.imshow(image, interpolation='nearest', cmap='gray' if image.ndim == 2 else None)
        axes.set_title(f'true: {true_name}\npred: {names[predicted]} '
                       f'{probabilities[index, predicted]:.0%}', fontsize=8,
                       color=MISTAKE_COLOR if names[predicted] != true_name else 'black')
    title = evaluation_title(predictions['model'], predictions['split'], len(labels))
    figure.suptitle(f'Predictions of {title}: most confident mistakes first (in red)')
    return figure


# ----------------------------------------------------------------------------
# Writing PNGs.


def run_figures(model_dir: str, model: str = 'final',
                split: str | None = None) -> dict[str, Figure]:
    """Every figure a run folder's files allow, by file name; every file checked.

    The curves come from history.csv; the others are `model`'s on `split`
    (default: the trainer's). Those of final.keras on the trainer's split come
    from metrics.json and predictions.npz, each group skipped with a printed
    line while its file does not exist yet; the others from the files
    scripts/evaluate.py wrote, and their names end in -<model>-<split>.
    """
    history = load_history(model_dir)
    figures = {'loss.png': plot_curves(history, 'loss'),
               'accuracy.png': plot_curves(history, 'accuracy'),
               'learning_rate.png': plot_learning_rate(history)}
    trainer_metrics = load_metrics(os.path.join(model_dir, run_folder.METRICS))
    trainer_split = trainer_metrics.split if trainer_metrics else None
    if model != 'final' or split not in (None, trainer_split):
        return {**figures, **_evaluation_figures(model_dir, model, split or trainer_split)}
    predictions = load_predictions(os.path.join(model_dir, run_folder.PREDICTIONS))
    if trainer_metrics is None:
        print(f'{model_dir}: no {run_folder.METRICS} yet, skipping confusion_matrix.png and '
              'per_class_accuracy.png')
    if predictions is None:
        print(f'{model_dir}: no {run_folder.PREDICTIONS} yet, skipping samples.png')
    return {**figures, **_results_figures(trainer_metrics, predictions, '')}


def _evaluation_figures(model_dir: str, model: str, split: str | None) -> dict[str, Figure]:
    """The figures of the files scripts/evaluate.py wrote for a model and split."""
    if split is None:
        raise UserInputError(f'{model_dir} has no {run_folder.METRICS} yet to take the '
                             "trainer's split from: give --split")
    model_path = run_folder.model_path(model_dir, model)
    metrics_path = run_folder.evaluation_metrics(model_dir, model_path, split)
    metrics = load_metrics(metrics_path)
    if metrics is None:
        raise _not_evaluated(metrics_path, model_dir, model, split)
    predictions_path = run_folder.evaluation_predictions(model_dir, model_path, split)
    predictions = load_predictions(predictions_path)
    if predictions is None:
        raise _not_evaluated(predictions_path, model_dir, model, split)
    return _results_figures(metrics, predictions, f'-{run_folder.model_label(model_path)}-{split}')


def _results_figures(metrics: run_folder.Metrics | None, predictions: dict | None,
                     suffix: str) -> dict[str, Figure]:
    """The figures of one evaluation, those whose file there is."""
    figures = {}
    if metrics is not None:
        figures[f'confusion_matrix{suffix}.png'] = plot_confusion_matrix(metrics)
        figures[f'per_class_accuracy{suffix}.png'] = plot_per_class_accuracy(metrics)
    if predictions is not None:
        figures[f'samples{suffix}.png'] = plot_samples(predictions)
    return figures


def _not_evaluated(missing: str, model_dir: str, model: str, split: str) -> UserInputError:
    """Names the missing file of an evaluation and the evaluate.py command that writes it."""
    records_dir = 'RECORDS'  # Only a hint: without a readable config.json, a placeholder.
    if files.exists(os.path.join(model_dir, run_folder.CONFIG)):
        with contextlib.suppress(UserInputError):
            records_dir = run_folder.read_run_config(model_dir).records.records_dir
    return UserInputError(
        f'{missing} not found: python scripts/evaluate.py --model_dir={model_dir} '
        f'--model={model} --split={split} --records_dir={records_dir} writes it')


def comparison_figures(model_dirs: list[str]) -> dict[str, Figure]:
    """compare_loss.png and compare_accuracy.png overlaying several runs, each
    named by its folder's name, or its whole path if two share it."""
    if not model_dirs:
        raise UserInputError('no run folders to compare')
    names = [os.path.basename(model_dir.rstrip('/')) or model_dir for model_dir in model_dirs]
    if len(set(names)) < len(names):
        if len(set(model_dirs)) < len(model_dirs):
            raise UserInputError(f'a run folder is listed twice in {",".join(model_dirs)}')
        names = list(model_dirs)
    histories = {name: load_history(model_dir) for name, model_dir in zip(names, model_dirs)}
    return {f'compare_{metric}.png': plot_comparison(histories, metric)
            for metric in CURVE_METRICS}


def save_figures(figures: dict[str, Figure], output_dir: str) -> list[str]:
    """Writes each figure as output_dir/<name>; returns the paths written."""
    if files.exists(output_dir) and not files.isdir(output_dir):
        raise UserInputError(f'{output_dir} is a file, not a folder for the figures')
    files.makedirs(output_dir)
    paths = []
    for name, figure in figures.items():
        # Through bytes, so remote folders take the same path as local ones.
        buffer = io.BytesIO()
        figure.savefig(buffer, format='png', dpi=DOTS_PER_INCH)
        paths.append(os.path.join(output_dir, name))
        files.write_atomically(paths[-1], buffer.getvalue())
    return paths


def write_plots(model_dir: str | None, compare_dirs: list[str], output_dir: str | None = None,
                model: str = 'final', split: str | None = None) -> list[str]:
    """Writes the figures of a run (`run_figures`, unless model_dir is None) and
    of compare_dirs overlaid (if any) into output_dir, by default model_dir and
    the first of compare_dirs. Returns the paths written: none on bad input."""
    batches = []
    if model_dir:
        batches.append((run_figures(model_dir, model, split), output_dir or model_dir))
    if compare_dirs:
        batches.append((comparison_figures(compare_dirs), output_dir or compare_dirs[0]))
    return [path for figures, folder in batches for path in save_figures(figures, folder)]
