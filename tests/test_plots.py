"""The plotting stage, on small run folders written in the trainer's formats."""

import csv
import io
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from cifar_tfrecord import files
from cifar_tfrecord import plots
from cifar_tfrecord import run_folder
from cifar_tfrecord.config import InputConfig, TrainConfig
from conftest import REPOSITORY, SCRIPTS, run_script

CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
               'ship', 'truck')
HISTORY_COLUMNS = ('epoch', 'phase', 'loss', 'accuracy', 'val_loss', 'val_accuracy',
                   'learning_rate', 'images_per_second', 'epoch_seconds')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
CURVE_FIGURES = {'loss.png', 'accuracy.png', 'learning_rate.png'}
RUN_FIGURES = CURVE_FIGURES | {'confusion_matrix.png', 'per_class_accuracy.png',
                               'samples.png'}
PREDICTION_COUNT = 40


# ----------------------------------------------------------------------------
# Run folders in the trainer's formats.


def history_row(epoch: int, phase: str, **values) -> dict:
    row = {'epoch': epoch, 'phase': phase, 'loss': 2 / epoch, 'accuracy': 1 - 0.5 / epoch,
           'val_loss': 2.2 / epoch, 'val_accuracy': 1 - 0.6 / epoch,
           'learning_rate': 1e-3 if phase == 'freeze' else 1e-5,
           'images_per_second': 900.0, 'epoch_seconds': 50.0}
    row.update(values)
    return row


def phases_history(freeze_epochs: int, fine_tune_epochs: int) -> list[dict]:
    return ([history_row(epoch, 'freeze') for epoch in range(1, freeze_epochs + 1)]
            + [history_row(epoch, 'fine_tune') for epoch in
               range(freeze_epochs + 1, freeze_epochs + fine_tune_epochs + 1)])


def write_history(folder, rows, columns=HISTORY_COLUMNS):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / run_folder.HISTORY, 'w', newline='') as file:
        writer = csv.DictWriter(file, columns, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    return folder


def write_metrics(folder, seed=0, name=run_folder.METRICS, **fields):
    """The trainer's metrics.json (or, by `name`, evaluate.py's); `fields` override."""
    random = np.random.default_rng(seed)
    # A mostly diagonal matrix, like a trained model's.
    counts = random.integers(0, 8, size=(10, 10)) + np.diag(random.integers(60, 100, size=10))
    per_class = np.diag(counts) / counts.sum(axis=1)
    metrics = {'model': run_folder.FINAL_MODEL, 'split': 'validation',
               'examples': int(counts.sum()),
               'accuracy': float(np.trace(counts) / counts.sum()),
               'loss': 0.4, 'class_names': list(CLASS_NAMES),
               'per_class_accuracy': dict(zip(CLASS_NAMES, per_class.tolist())),
               'confusion_matrix': counts.tolist()}
    metrics.update(fields)
    metrics = {key: value for key, value in metrics.items() if value is not None}
    (folder / name).write_text(json.dumps(metrics))
    return metrics


def write_run_config(folder, records_dir):
    """config.json as the trainer writes it, of a run on `records_dir`."""
    files.write_dataclass(str(folder / run_folder.CONFIG), run_folder.RunConfig(
        config=TrainConfig(model_dir=str(folder), input=InputConfig(records_dir=records_dir)),
        records=run_folder.TrainedOn('0' * 64, CLASS_NAMES, records_dir),
        mixed_precision='float32', jit_compile=False, strategy='default', replicas=1,
        versions={}, devices=(), command=(), recipe=run_folder.Recipe({}, ())))


def write_predictions(folder, seed=0, name=run_folder.PREDICTIONS, **arrays):
    """The trainer's predictions.npz (or, by `name`, evaluate.py's); `arrays` override."""
    random = np.random.default_rng(seed)
    probabilities = random.dirichlet(np.full(10, 0.3), size=PREDICTION_COUNT)
    contents = {'images': random.integers(0, 256, (PREDICTION_COUNT, 32, 32, 3), np.uint8),
                'labels': random.integers(0, 10, PREDICTION_COUNT),
                'probabilities': probabilities.astype(np.float32),
                'class_names': np.array(CLASS_NAMES),
                'model': np.array(run_folder.FINAL_MODEL), 'split': np.array('validation')}
    contents.update(arrays)
    np.savez(folder / name, **{key: value for key, value in contents.items() if value is not None})


@pytest.fixture
def finished_run(tmp_path):
    """A run with a frozen and a fine-tuning phase, evaluated."""
    folder = write_history(tmp_path / 'runs' / 'finished', phases_history(3, 3))
    write_metrics(folder)
    write_predictions(folder)
    return folder


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    width, height = Image.open(io.BytesIO(data)).size
    assert width > 0 and height > 0
    return width, height


def figure_png(figure) -> bytes:
    assert isinstance(figure, Figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png')
    return buffer.getvalue()


def pngs_under(folder) -> list[str]:
    return sorted(str(path) for path in folder.rglob('*.png'))


def metrics_of(run) -> run_folder.Metrics | None:
    return plots.load_metrics(str(run / run_folder.METRICS))


def predictions_of(run) -> dict | None:
    return plots.load_predictions(str(run / run_folder.PREDICTIONS))


# ----------------------------------------------------------------------------
# Each figure.

FIGURE_MAKERS = {
    'loss': lambda run: plots.plot_curves(plots.load_history(run), 'loss'),
    'accuracy': lambda run: plots.plot_curves(plots.load_history(run), 'accuracy'),
    'learning_rate': lambda run: plots.plot_learning_rate(plots.load_history(run)),
    'confusion_matrix': lambda run: plots.plot_confusion_matrix(metrics_of(run)),
    'per_class_accuracy': lambda run: plots.plot_per_class_accuracy(metrics_of(run)),
    'samples': lambda run: plots.plot_samples(predictions_of(run)),
    'comparison': lambda run: plots.plot_comparison(
        {'a': plots.load_history(run), 'b': plots.load_history(run)}, 'accuracy'),
}


@pytest.mark.parametrize('name', FIGURE_MAKERS)
def test_every_figure_saves_as_a_png(finished_run, name):
    png_size(figure_png(FIGURE_MAKERS[name](finished_run)))


def test_write_plots_writes_every_figure_of_a_run(finished_run, tmp_path):
    output = tmp_path / 'figures'
    paths = plots.write_plots(str(finished_run), [], str(output))
    assert sorted(paths) == sorted(str(output / name) for name in RUN_FIGURES)
    assert pngs_under(output) == sorted(paths)
    for path in paths:
        png_size(open(path, 'rb').read())


def test_single_epoch_run_still_shows_its_point(tmp_path):
    run = write_history(tmp_path / 'run', [history_row(1, 'freeze')])
    figure = plots.plot_curves(plots.load_history(str(run)), 'loss')
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ['training', 'validation']
    for line in lines:
        assert len(line.get_xdata()) == 1
        assert line.get_marker() not in (None, '', 'None', ' ')
    left, right = figure.axes[0].get_xlim()
    assert [tick for tick in figure.axes[0].get_xticks() if left <= tick <= right] == [1]
    assert run_script('plot', f'--model_dir={run}') == 0
    assert {os.path.basename(path) for path in pngs_under(run)} == CURVE_FIGURES


def _fine_tune_lines(figure) -> list:
    return [line for line in figure.axes[0].get_lines()
            if line.get_label() == 'fine-tuning starts']


@pytest.mark.parametrize('metric', ['loss', 'accuracy'])
def test_fine_tuning_start_is_marked_between_the_phases(tmp_path, metric):
    run = write_history(tmp_path / 'run', phases_history(3, 2))
    figure = plots.plot_curves(plots.load_history(str(run)), metric)
    [marker] = _fine_tune_lines(figure)
    assert list(marker.get_xdata()) == [3.5, 3.5]
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert 'fine-tuning starts' in legend


@pytest.mark.parametrize('freeze_epochs, fine_tune_epochs', [(4, 0), (0, 4)])
def test_single_phase_runs_have_no_marker(tmp_path, freeze_epochs, fine_tune_epochs):
    run = write_history(tmp_path / 'run', phases_history(freeze_epochs, fine_tune_epochs))
    history = plots.load_history(str(run))
    assert _fine_tune_lines(plots.plot_curves(history, 'loss')) == []
    assert _fine_tune_lines(plots.plot_learning_rate(history)) == []


def test_learning_rate_is_on_a_log_scale(tmp_path):
    run = write_history(tmp_path / 'run', phases_history(2, 2))
    figure = plots.plot_learning_rate(plots.load_history(str(run)))
    assert figure.axes[0].get_yscale() == 'log'
    assert len(_fine_tune_lines(figure)) == 1


def test_resumed_history_keeps_the_last_row_of_each_epoch(tmp_path):
    rows = [history_row(1, 'freeze'), history_row(3, 'freeze'), history_row(2, 'freeze'),
            history_row(2, 'freeze', loss=0.123), history_row(4, 'fine_tune')]
    history = plots.load_history(str(write_history(tmp_path / 'run', rows)))
    assert history['epoch'].tolist() == [1, 2, 3, 4]
    assert history['loss'][1] == 0.123
    assert history['phase'].tolist() == ['freeze', 'freeze', 'freeze', 'fine_tune']
    assert all(len(values) == 4 for values in history.values())


def test_skipped_validation_reads_as_nan_and_is_not_drawn(tmp_path):
    rows = [history_row(1, 'freeze', val_loss='', val_accuracy=''), history_row(2, 'freeze')]
    history = plots.load_history(str(write_history(tmp_path / 'run', rows)))
    assert np.isnan(history['val_loss'][0]) and history['val_loss'][1] == 1.1
    training, validation = plots.plot_curves(history, 'loss').axes[0].get_lines()
    assert list(training.get_xdata()) == [1, 2]
    assert list(validation.get_xdata()) == [2]


def test_run_in_progress_gets_its_curves_only(tmp_path, capsys):
    run = write_history(tmp_path / 'run', phases_history(2, 0))
    assert run_script('plot', f'--model_dir={run}') == 0
    assert {os.path.basename(path) for path in pngs_under(tmp_path)} == CURVE_FIGURES
    output = capsys.readouterr().out
    assert f'no {run_folder.METRICS} yet' in output
    assert f'no {run_folder.PREDICTIONS} yet' in output
    assert str(run / 'loss.png') in output.splitlines()


def test_per_class_accuracy_has_a_bar_per_class_and_the_overall_line(finished_run):
    metrics = metrics_of(finished_run)
    axes = plots.plot_per_class_accuracy(metrics).axes[0]
    widths = [bar.get_width() for bar in axes.patches]
    assert widths == pytest.approx([metrics.per_class_accuracy[name] for name in CLASS_NAMES])
    [overall] = [line for line in axes.get_lines() if line.get_label().startswith('overall')]
    assert list(overall.get_xdata()) == pytest.approx([metrics.accuracy] * 2)
    assert [label.get_text() for label in axes.get_yticklabels()] == list(CLASS_NAMES)


def test_confusion_matrix_rows_are_normalized(finished_run):
    metrics = metrics_of(finished_run)
    axes = plots.plot_confusion_matrix(metrics).axes[0]
    shares = axes.get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(shares).sum(axis=1), np.ones(10))
    assert len(axes.texts) == 100
    assert [label.get_text() for label in axes.get_xticklabels()] == list(CLASS_NAMES)


def test_comparison_legend_names_each_run(finished_run, tmp_path):
    other = write_history(tmp_path / 'runs' / 'other', phases_history(2, 0))
    histories = {'finished': plots.load_history(str(finished_run)),
                 'other': plots.load_history(str(other))}
    figure = plots.plot_comparison(histories, 'loss')
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ['finished validation', 'finished training', 'other validation',
                      'other training']


# ----------------------------------------------------------------------------
# Whose results: each figure of results names its model and split.


def evaluation_titles(figures: dict) -> dict[str, str]:
    """The title of each figure of results, by file name."""
    titles = {}
    for name, figure in figures.items():
        if name.startswith('samples'):
            titles[name] = figure.get_suptitle()
        elif name.startswith(('confusion_matrix', 'per_class_accuracy')):
            titles[name] = figure.axes[0].get_title()
    return titles


def test_titles_name_the_model_and_split_of_the_trainer_files(tmp_path):
    run = write_history(tmp_path / 'run', phases_history(1, 1))
    metrics = write_metrics(run, seed=3, split='test')
    write_predictions(run, seed=3, split=np.array('test'))
    titles = evaluation_titles(plots.run_figures(str(run)))
    assert set(titles) == {'confusion_matrix.png', 'per_class_accuracy.png', 'samples.png'}
    images = np.asarray(metrics['confusion_matrix']).sum()
    assert f'final.keras on test, {images:,} images' in titles['confusion_matrix.png']
    assert f'final.keras on test, {images:,} images' in titles['per_class_accuracy.png']
    assert f'final.keras on test, {PREDICTION_COUNT} images' in titles['samples.png']


def test_title_counts_thousands_with_a_separator():
    assert plots.evaluation_title('best.keras', 'validation', 5000) == (
        'best.keras on validation, 5,000 images')


def write_evaluation(run, label, split, model_name, seed):
    """The metrics and predictions files scripts/evaluate.py writes."""
    write_metrics(run, seed, f'metrics-{label}-{split}.json', model=model_name, split=split)
    write_predictions(run, seed, f'predictions-{label}-{split}.npz',
                      model=np.array(model_name), split=np.array(split))


@pytest.fixture
def evaluated_run(finished_run):
    """A finished run, with best.keras evaluated on the trainer's split and on train."""
    write_evaluation(finished_run, 'best', 'validation', run_folder.BEST_MODEL, seed=5)
    write_evaluation(finished_run, 'best', 'train', run_folder.BEST_MODEL, seed=6)
    write_evaluation(finished_run, 'final', 'train', run_folder.FINAL_MODEL, seed=7)
    return finished_run


@pytest.mark.parametrize('model, split, suffix, metrics_file, described', [
    ('best', None, '-best-validation', 'metrics-best-validation.json', 'best.keras on validation'),
    ('best', 'train', '-best-train', 'metrics-best-train.json', 'best.keras on train'),
    ('final', 'train', '-final-train', 'metrics-final-train.json', 'final.keras on train'),
    ('final', 'validation', '', run_folder.METRICS, 'final.keras on validation'),
])
def test_model_and_split_choose_the_files_plotted(evaluated_run, model, split, suffix,
                                                  metrics_file, described):
    figures = plots.run_figures(str(evaluated_run), model, split)
    titles = evaluation_titles(figures)
    assert set(titles) == {f'{name}{suffix}.png'
                           for name in ('confusion_matrix', 'per_class_accuracy', 'samples')}
    assert all(described in title for title in titles.values())
    assert CURVE_FIGURES < set(figures)  # The run's curves, whatever the model.
    # The bars are those of the chosen file: each file was written with its own seed.
    expected = json.loads((evaluated_run / metrics_file).read_text())['per_class_accuracy']
    bars = figures[f'per_class_accuracy{suffix}.png'].axes[0].patches
    assert [bar.get_width() for bar in bars] == pytest.approx(
        [expected[name] for name in CLASS_NAMES])


def test_plot_script_writes_a_models_figures_beside_the_runs(evaluated_run, capsys):
    assert run_script('plot', f'--model_dir={evaluated_run}', '--model=best') == 0
    written = {os.path.basename(line) for line in capsys.readouterr().out.splitlines()}
    assert written == CURVE_FIGURES | {'confusion_matrix-best-validation.png',
                                       'per_class_accuracy-best-validation.png',
                                       'samples-best-validation.png'}


def test_a_model_path_reads_the_files_named_after_it(finished_run, tmp_path):
    write_evaluation(finished_run, 'epoch7', 'validation', str(tmp_path / 'epoch7.keras'), 8)
    titles = evaluation_titles(plots.run_figures(
        str(finished_run), str(tmp_path / 'epoch7.keras'), 'validation'))
    assert set(titles) == {'confusion_matrix-epoch7-validation.png',
                           'per_class_accuracy-epoch7-validation.png',
                           'samples-epoch7-validation.png'}
    assert all(f'{tmp_path / "epoch7.keras"} on validation' in title
               for title in titles.values())


def test_unevaluated_model_names_the_evaluate_command(finished_run, capsys):
    write_run_config(finished_run, '/data/records')
    assert run_script('plot', f'--model_dir={finished_run}', '--model=best') == 1
    [error] = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert f'{finished_run / "metrics-best-validation.json"} not found' in error
    assert (f'python scripts/evaluate.py --model_dir={finished_run} --model=best '
            '--split=validation --records_dir=/data/records') in error
    assert pngs_under(finished_run) == []


def test_evaluation_without_its_predictions_names_the_missing_file(finished_run, capsys):
    write_metrics(finished_run, name='metrics-best-validation.json', model=run_folder.BEST_MODEL)
    assert run_script('plot', f'--model_dir={finished_run}', '--model=best') == 1
    error = capsys.readouterr().err
    assert f'error: {finished_run / "predictions-best-validation.npz"} not found' in error
    assert '--records_dir=RECORDS' in error  # No config.json to say where the records are.
    assert pngs_under(finished_run) == []


def test_another_model_of_a_run_in_progress_needs_a_split(tmp_path, capsys):
    run = write_history(tmp_path / 'run', phases_history(2, 0))
    assert run_script('plot', f'--model_dir={run}', '--model=best') == 1
    assert f'no {run_folder.METRICS} yet' in capsys.readouterr().err
    assert pngs_under(tmp_path) == []


# ----------------------------------------------------------------------------
# The sample grid.


def test_sample_selection_starts_with_the_most_confident_mistakes():
    labels = np.zeros(20, dtype=int)
    probabilities = np.tile([0.9, 0.1], (20, 1))
    # Mistakes (predicted class 1) at 5, 11 and 17, the most confident at 11.
    probabilities[[5, 11, 17]] = [[0.4, 0.6], [0.05, 0.95], [0.3, 0.7]]
    indices = plots.select_sample_indices(probabilities, labels, count=8)
    assert indices.tolist()[:3] == [11, 17, 5]
    assert len(indices) == 8 and len(set(indices.tolist())) == 8
    assert indices.tolist() == plots.select_sample_indices(probabilities, labels, 8).tolist()


def test_sample_selection_keeps_half_the_grid_for_mistakes():
    labels = np.zeros(30, dtype=int)
    confidences = np.linspace(0.5, 0.99, 30)
    # Every image is a mistake; only the 4 most confident may take half of 8.
    probabilities = np.stack([1 - confidences, confidences], axis=1)
    indices = plots.select_sample_indices(probabilities, labels, count=8)
    assert indices.tolist()[:4] == [29, 28, 27, 26]
    assert len(indices) == 8 and len(set(indices.tolist())) == 8


def test_sample_selection_of_fewer_images_than_cells():
    probabilities = np.array([[0.2, 0.8], [0.9, 0.1], [0.6, 0.4]])
    indices = plots.select_sample_indices(probabilities, np.zeros(3, dtype=int), count=32)
    assert indices.tolist() == [0, 1, 2]


def test_sample_grid_shows_the_most_confident_mistake_first(finished_run):
    predictions = predictions_of(finished_run)
    probabilities, labels = predictions['probabilities'], predictions['labels']
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    worst = wrong[probabilities[wrong].max(axis=1).argmax()]
    figure = plots.plot_samples(predictions, columns=4, rows=2)
    first = figure.axes[0]
    title = first.title.get_text()
    assert f'true: {CLASS_NAMES[labels[worst]]}' in title
    assert f'pred: {CLASS_NAMES[probabilities[worst].argmax()]}' in title
    assert first.title.get_color() == plots.MISTAKE_COLOR
    assert first.get_images()[0].get_interpolation() == 'nearest'
    right = [axes for axes in figure.axes if axes.get_images()
             and axes.title.get_color() != plots.MISTAKE_COLOR]
    assert all(_title_names_agree(axes.title.get_text()) for axes in right)


def _title_names_agree(title: str) -> bool:
    true_line, predicted_line = title.splitlines()
    return true_line.split()[1] == predicted_line.split()[1]


# ----------------------------------------------------------------------------
# The script.


def test_compare_writes_both_comparison_figures(finished_run, tmp_path, capsys):
    other = write_history(tmp_path / 'runs' / 'other', phases_history(2, 1))
    output = tmp_path / 'comparison'
    assert run_script('plot', f'--compare={finished_run},{other}',
                      f'--output_dir={output}') == 0
    written = capsys.readouterr().out.splitlines()
    assert written == [str(output / 'compare_loss.png'), str(output / 'compare_accuracy.png')]
    for path in written:
        png_size(open(path, 'rb').read())


def test_compare_defaults_to_the_first_run_folder(finished_run, tmp_path):
    other = write_history(tmp_path / 'runs' / 'other', phases_history(1, 0))
    assert run_script('plot', f'--compare={other},{finished_run}') == 0
    assert pngs_under(tmp_path) == [str(other / 'compare_accuracy.png'),
                                    str(other / 'compare_loss.png')]


def test_model_dir_with_compare_writes_both_sets(tmp_path):
    run = write_history(tmp_path / 'runs' / 'run', phases_history(2, 2))
    other = write_history(tmp_path / 'runs' / 'other', phases_history(2, 0))
    output = tmp_path / 'out'
    assert run_script('plot', f'--model_dir={run}', f'--compare={run},{other}',
                      f'--output_dir={output}') == 0
    assert {os.path.basename(path) for path in pngs_under(output)} == CURVE_FIGURES | {
        'compare_loss.png', 'compare_accuracy.png'}


def _no_history(run):
    run.mkdir(parents=True)


def _empty_history(run):
    run.mkdir(parents=True)
    (run / run_folder.HISTORY).write_bytes(b'')


def _header_only_history(run):
    write_history(run, [])


def _history_missing_columns(run):
    write_history(run, phases_history(2, 0), columns=('epoch', 'phase', 'loss', 'accuracy'))


def _malformed_metrics(run):
    write_history(run, phases_history(2, 0))
    write_predictions(run)
    (run / run_folder.METRICS).write_text('{"accuracy": 0.9, "class_names": [')


def _metrics_missing_a_field(run):
    write_history(run, phases_history(2, 0))
    write_metrics(run, confusion_matrix=None)


def _metrics_without_its_model(run):
    """As written before metrics recorded their model and split: refused."""
    write_history(run, phases_history(2, 0))
    write_metrics(run, model=None, split=None)


def _predictions_without_their_model(run):
    write_history(run, phases_history(2, 0))
    write_metrics(run)
    write_predictions(run, model=None, split=None)


def _unreadable_predictions(run):
    write_history(run, phases_history(2, 0))
    (run / run_folder.PREDICTIONS).write_bytes(b'not a zip archive')


def _non_number_in_history(run):
    write_history(run, [history_row(1, 'freeze', loss='high')])


BAD_RUNS = {
    # name: (how to spoil the run folder, what stderr must name)
    'no_folder': (lambda run: None, ['run: no such run folder']),
    'no_history': (_no_history, [f'no {run_folder.HISTORY} in', 'has this run started?']),
    'empty_history': (_empty_history, [f'{run_folder.HISTORY} is empty']),
    'header_only_history': (_header_only_history, [f'{run_folder.HISTORY} has no epochs']),
    'missing_columns': (_history_missing_columns, [
        run_folder.HISTORY, 'lacks the columns val_loss, val_accuracy, learning_rate']),
    'malformed_metrics': (_malformed_metrics, [run_folder.METRICS, 'not valid JSON']),
    'metrics_missing_field': (_metrics_missing_a_field, [run_folder.METRICS, 'confusion_matrix']),
    'metrics_without_model': (_metrics_without_its_model, [run_folder.METRICS, 'model']),
    'predictions_without_model': (_predictions_without_their_model,
                                  [run_folder.PREDICTIONS, 'model, split']),
    'unreadable_predictions': (_unreadable_predictions, [run_folder.PREDICTIONS]),
    'non_number': (_non_number_in_history, [f'{run_folder.HISTORY} line 2: loss=']),
}


@pytest.mark.parametrize('case', BAD_RUNS)
def test_bad_run_folder_fails_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    spoil, messages = BAD_RUNS[case]
    run = tmp_path / 'run'
    spoil(run)
    assert run_script('plot', f'--model_dir={run}') == 1
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith('error:')]
    assert len(errors) == 1
    assert str(run) in errors[0]
    for message in messages:
        assert message in errors[0]
    assert pngs_under(tmp_path) == []


def test_bad_compared_run_writes_nothing_at_all(finished_run, tmp_path, capsys):
    missing = tmp_path / 'runs' / 'missing'
    assert run_script('plot', f'--model_dir={finished_run}',
                      f'--compare={finished_run},{missing}') == 1
    assert f'error: {missing}: no such run folder' in capsys.readouterr().err
    assert pngs_under(tmp_path) == []


def test_output_dir_that_is_a_file_is_an_error(tmp_path, capsys):
    run = write_history(tmp_path / 'run', phases_history(2, 0))
    output = tmp_path / 'figures'
    output.write_text('not a folder')
    assert run_script('plot', f'--model_dir={run}', f'--output_dir={output}') == 1
    assert f'error: {output} is a file' in capsys.readouterr().err
    assert pngs_under(tmp_path) == []


def test_nothing_to_plot_is_an_error(capsys):
    assert run_script('plot') == 1
    assert 'error: nothing to plot' in capsys.readouterr().err


# ----------------------------------------------------------------------------
# Remote paths and start-up cost.


class _MemoryGFile:
    """Enough of tf.io.gfile, kept in a dict, to check which paths use it."""

    def __init__(self):
        self.files = {}

    def exists(self, path):
        return path in self.files or self.isdir(path)

    def isdir(self, path):
        return any(name.startswith(path.rstrip('/') + '/') for name in self.files)

    def makedirs(self, path):
        pass

    def rename(self, source, target, overwrite=False):
        self.files[target] = self.files.pop(source)

    def GFile(self, path, mode):
        gfile = self

        class _File(io.BytesIO):
            def __exit__(self, *error):
                if 'w' in mode:
                    gfile.files[path] = self.getvalue()
                return super().__exit__(*error)

        return _File(None if 'w' in mode else self.files[path])


def test_remote_run_folders_go_through_gfile(finished_run, tmp_path, monkeypatch):
    gfile = _MemoryGFile()
    for name in (run_folder.HISTORY, run_folder.METRICS, run_folder.PREDICTIONS):
        gfile.files[f'ram://run/{name}'] = (finished_run / name).read_bytes()
    gfile.files[f'ram://curves/{run_folder.HISTORY}'] = (
        finished_run / run_folder.HISTORY).read_bytes()
    fake_tensorflow = types.SimpleNamespace(io=types.SimpleNamespace(gfile=gfile))
    monkeypatch.setitem(sys.modules, 'tensorflow', fake_tensorflow)
    assert plots.load_metrics('ram://run/metrics.json') == metrics_of(finished_run)
    assert plots.load_predictions('ram://run/predictions.npz')['labels'].tolist() == (
        predictions_of(finished_run)['labels'].tolist())
    # Curves only: drawing every figure again would only slow the test down.
    paths = plots.write_plots('ram://curves', [])
    assert sorted(paths) == sorted(f'ram://curves/{name}' for name in CURVE_FIGURES)
    for path in paths:
        png_size(gfile.files[path])
    assert pngs_under(tmp_path) == []


def test_plotting_does_not_import_tensorflow(tmp_path):
    run = write_history(tmp_path / 'run', phases_history(2, 2))
    write_metrics(run)
    # This process imported TensorFlow already (conftest), so ask a fresh one.
    code = (
        'import runpy, sys\n'
        f'sys.argv = ["plot.py", "--model_dir={run}"]\n'
        'import cifar_tfrecord.plots\n'
        'assert "tensorflow" not in sys.modules, "cifar_tfrecord.plots imports tensorflow"\n'
        'try:\n'
        f'    runpy.run_path({os.path.join(SCRIPTS, "plot.py")!r}, run_name="__main__")\n'
        'except SystemExit as exit_:\n'
        '    assert not exit_.code, exit_.code\n'
        'assert "tensorflow" not in sys.modules, "scripts/plot.py imports tensorflow"\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPOSITORY,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert {os.path.basename(path) for path in pngs_under(run)} == RUN_FIGURES - {'samples.png'}
