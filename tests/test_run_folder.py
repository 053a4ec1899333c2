"""The run folder's layout: names, which files a run owns, and every script
that reads a run refusing a damaged file of it in one line, changing nothing.
"""

import json
import os
import shutil

import pytest
import tensorflow as tf

from cifar_tfrecord import run_folder
from conftest import SMALL_TRAINING, run_script


@pytest.mark.parametrize('name, is_run_file', [
    (run_folder.HISTORY, True), (run_folder.BACKUP, True), ('metrics-best-validation.json', True),
    ('predictions-final-test.npz', True), ('submission-final.csv', True), ('.worker-1', True),
    ('notes.txt', False), ('metrics.txt', False), ('my_model.keras', False)])
def test_run_folder_knows_which_files_are_a_runs(name, is_run_file):
    assert run_folder.is_run_file(name) == is_run_file


def test_models_by_name_or_path():
    assert run_folder.model_path('runs/a', 'final') == 'runs/a/final.keras'
    assert run_folder.model_path('runs/a', 'best') == 'runs/a/best.keras'
    assert run_folder.model_path('runs/a', 'elsewhere/mine.keras') == 'elsewhere/mine.keras'
    assert run_folder.evaluation_metrics('runs/a', 'elsewhere/mine.keras', 'test') == (
        'runs/a/metrics-mine-test.json')


# ----------------------------------------------------------------------------
# A damaged file of a finished run, through plot.py, a rerun of train.py,
# evaluate.py and predict.py: one line naming the file, exit status 1, and
# the run folder as it was.

RUN_FLAGS = [*SMALL_TRAINING, '--freeze_epochs=0', '--fine_tune_epochs=2', '--steps_per_epoch=1',
             '--mixed_precision=float32', '--noexport_saved_model']
# Past this size a file is compared by inode, size and time, not bytes: the
# models. Every write of a run replaces a file by renaming, a new inode.
COMPARED_BY_INODE = 1 << 20


@pytest.fixture(scope='module')
def finished_run(sample_records, tmp_path_factory):
    """A run trained to its end, two epochs of one step. Read only."""
    run = tmp_path_factory.mktemp('finished') / 'run'
    assert run_script('train', f'--records_dir={sample_records}', f'--model_dir={run}',
                      *RUN_FLAGS) == 0
    return run


def copy_run(run, destination):
    """The run's small files copied, its models hard-linked (no case edits them)."""
    def copy(source, target):
        if os.path.getsize(source) > COMPARED_BY_INODE:
            os.link(source, target)
        else:
            shutil.copy2(source, target)
    shutil.copytree(run, destination, copy_function=copy)
    return destination


def listing(folder) -> dict:
    """Every file under the folder, with its bytes (a large one, its inode, size and time)."""
    entries = {}
    for path in sorted(folder.rglob('*')):
        status = path.stat()
        entries[str(path.relative_to(folder))] = (
            None if path.is_dir() else
            (status.st_ino, status.st_size, status.st_mtime_ns)
            if status.st_size > COMPARED_BY_INODE else path.read_bytes())
    return entries


def _rewrite(name, change):
    """A spoiling: `change(text)` gives the file's new text."""
    def spoil(run):
        path = run / name
        path.write_text(change(path.read_text()))
    return spoil


def _edit_json(name, change):
    """A spoiling: `change(value)` edits the file's JSON value in place."""
    def edit(text):
        value = json.loads(text)
        change(value)
        return json.dumps(value, indent=2)
    return _rewrite(name, edit)


def _cut_mid_row(text):
    """history.csv cut in the middle of its last row."""
    last_row = text.rstrip('\n').rsplit('\n', 1)[1]
    return text[:len(text.rstrip('\n')) - len(last_row) + len(last_row) // 2]


def _non_number(text):
    header, first, *rest = text.splitlines()
    values = first.split(',')
    values[header.split(',').index('loss')] = 'low'
    return '\n'.join([header, ','.join(values), *rest]) + '\n'


def _write_bytes(name, data):
    def spoil(run):
        (run / name).write_bytes(data)
    return spoil


def _half(text):
    return text[:len(text) // 2]


def _cut_model(run):
    """final.keras cut in half: a new file, the hard link to the fixture's removed first."""
    path = run / run_folder.FINAL_MODEL
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[:len(data) // 2])


def _damaged_backup(run):
    """An unfinished run whose state.json names a backup of garbage bytes."""
    (run / run_folder.BACKUP).mkdir()
    backup = f'{run_folder.BACKUP}/epoch-0002.weights.h5'
    (run / backup).write_bytes(b'\x89HDF\r\n\x1a\n' + b'?' * 64)
    state = json.loads((run / run_folder.STATE).read_text())
    state.update(finished=False, backup=backup)
    (run / run_folder.STATE).write_text(json.dumps(state))


PLOT, RESUME, EVALUATE, PREDICT = 'plot', 'resume', 'evaluate', 'predict'
READERS_OF_CONFIG = (RESUME, EVALUATE, PREDICT)
HISTORY, CONFIG, STATE = run_folder.HISTORY, run_folder.CONFIG, run_folder.STATE
BEST, METRICS = run_folder.BEST_RECORD, run_folder.METRICS
NOT_JSON = 'not valid JSON'
BAD_RUN_FILES = {
    # name: (file, spoiling, {script: key words of the line after the file's path})
    'history_cut_mid_row': (HISTORY, _rewrite(HISTORY, _cut_mid_row), {
        PLOT: ['line 3', '5 values for 9 columns'], RESUME: ['line 3', '5 values']}),
    'history_empty': (HISTORY, _write_bytes(HISTORY, b''), {
        PLOT: ['empty'], RESUME: ['empty']}),
    'history_header_only': (HISTORY, _rewrite(HISTORY, lambda text: text.split('\n')[0] + '\n'), {
        PLOT: ['no epochs yet'], RESUME: ['no row for epoch 1', STATE]}),
    'history_non_number': (HISTORY, _rewrite(HISTORY, _non_number), {
        PLOT: ['line 2', "loss='low'", 'not a number'], RESUME: ['line 2', "loss='low'"]}),
    'config_truncated': (CONFIG, _rewrite(CONFIG, _half), {
        script: [NOT_JSON] for script in READERS_OF_CONFIG}),
    'config_not_text': (CONFIG, _write_bytes(CONFIG, b'{"config": "\xff\xfe"}'), {
        script: ['not UTF-8'] for script in READERS_OF_CONFIG}),
    'config_missing_key': (CONFIG, _edit_json(CONFIG, lambda saved: saved.pop('config')), {
        script: ['lacks the key config'] for script in READERS_OF_CONFIG}),
    # A key of a flag missing: not filled in from today's default.
    'config_missing_flag': (CONFIG, _edit_json(CONFIG, lambda saved: saved['config'][
        'input'].pop('image_size')), {
        script: ['lacks the key config.input.image_size'] for script in READERS_OF_CONFIG}),
    'config_missing_resolved': (CONFIG, _edit_json(CONFIG, lambda saved: saved.pop(
        'mixed_precision')), {script: ['lacks the key mixed_precision']
                              for script in READERS_OF_CONFIG}),
    'config_wrong_type': (CONFIG, _edit_json(CONFIG, lambda saved: saved['config'][
        'input'].update(image_size='32')), {
        script: ['config.input.image_size', 'whole number', '"32"']
        for script in READERS_OF_CONFIG}),
    'config_unknown_key': (CONFIG, _edit_json(CONFIG, lambda saved: saved['config'][
        'input'].update(colour='red')), {
        script: ['unknown key config.input.colour'] for script in READERS_OF_CONFIG}),
    'config_bad_value': (CONFIG, _edit_json(CONFIG, lambda saved: saved['config'][
        'input'].update(normalization='zscore')), {
        script: ['--normalization=zscore'] for script in READERS_OF_CONFIG}),
    'config_records_fingerprint': (CONFIG, _edit_json(CONFIG, lambda saved: saved[
        'records'].update(fingerprint=12)), {
        script: ['records.fingerprint', 'a string', '12'] for script in READERS_OF_CONFIG}),
    'state_truncated': (STATE, _rewrite(STATE, _half), {RESUME: [NOT_JSON]}),
    'state_missing_key': (STATE, _edit_json(STATE, lambda state: state.pop('finished')), {
        RESUME: ['lacks the key finished']}),
    'state_wrong_type': (STATE, _edit_json(STATE, lambda state: state.update(
        epochs_done='2')), {RESUME: ['epochs_done', 'whole number', '"2"']}),
    'best_truncated': (BEST, _rewrite(BEST, _half), {RESUME: [NOT_JSON]}),
    'metrics_truncated': (METRICS, _rewrite(METRICS, _half), {
        PLOT: [NOT_JSON], RESUME: [NOT_JSON]}),
    'metrics_missing_key': (METRICS, _edit_json(METRICS, lambda metrics: metrics.pop(
        'accuracy')), {PLOT: ['lacks the key accuracy'], RESUME: ['lacks the key accuracy']}),
    'backup_damaged': (f'{run_folder.BACKUP}/epoch-0002.weights.h5', _damaged_backup, {
        RESUME: ["cannot be read as this run's weights"]}),
    'model_cut': (run_folder.FINAL_MODEL, _cut_model, {
        script: ['not a readable Keras model', 'truncated or damaged']
        for script in (EVALUATE, PREDICT)}),
}
CASES = [(case, script) for case, (_, _, messages) in BAD_RUN_FILES.items()
         for script in messages]


def run_reader(script, run, records_dir) -> int:
    if script == RESUME:
        return run_script('train', f'--records_dir={records_dir}', f'--model_dir={run}',
                          *RUN_FLAGS)
    if script == PLOT:
        return run_script('plot', f'--model_dir={run}')
    return run_script(script, f'--model_dir={run}', f'--records_dir={records_dir}')


@pytest.mark.slow
@pytest.mark.parametrize('case, script', CASES)
def test_a_damaged_run_file_is_one_line_naming_it_and_nothing_changes(
        finished_run, sample_records, tmp_path, capsys, case, script):
    name, spoil, messages = BAD_RUN_FILES[case]
    run = copy_run(finished_run, tmp_path / 'run')
    spoil(run)
    before = listing(run)
    assert run_reader(script, run, sample_records) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0].startswith(f'error: {run / name}'), errors
    for words in messages[script]:
        assert words in errors[0], errors
    assert 'Traceback' not in captured.err
    assert listing(run) == before


@pytest.mark.slow
@pytest.mark.parametrize('script', [PLOT, RESUME])
def test_the_whole_run_is_read_and_left_as_it_was(finished_run, sample_records, tmp_path,
                                                  script):
    """The same readers on the undamaged copy succeed: what the cases above change is
    what they refuse. (A finished run rerun does nothing; plot.py writes into
    the run folder, so its figures are the only change.)"""
    run = copy_run(finished_run, tmp_path / 'run')
    before = listing(run)
    assert run_reader(script, run, sample_records) == 0
    after = listing(run)
    assert {name: after[name] for name in before} == before
    assert all(name.endswith('.png') for name in set(after) - set(before))


@pytest.mark.slow
def test_a_run_without_its_config_is_not_started_over(finished_run, sample_records, tmp_path,
                                                      capsys):
    run = copy_run(finished_run, tmp_path / 'run')
    (run / CONFIG).unlink()
    before = listing(run)
    assert run_reader(RESUME, run, sample_records) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0].startswith(f'error: {run / CONFIG} is missing'), errors
    for name in (STATE, HISTORY, run_folder.FINAL_MODEL, '--overwrite'):
        assert name in errors[0]
    assert listing(run) == before


@pytest.mark.slow
@pytest.mark.parametrize('saved, key_words', [
    # What `auto` resolved to on the machine that trained: another machine's
    # `auto` would resolve otherwise, and is refused, not followed.
    (dict(mixed_precision='mixed_float16'), ['--mixed_precision=float32', 'resolves to float32',
                                             'mixed_float16']),
    (dict(jit_compile=True), ['--jit_compile', 'resolves to False', 'True']),
])
def test_a_resume_that_resolves_a_setting_otherwise_is_refused(
        finished_run, sample_records, tmp_path, capsys, saved, key_words):
    run = copy_run(finished_run, tmp_path / 'run')
    _edit_json(CONFIG, lambda config: config.update(saved))(run)
    state = json.loads((run / STATE).read_text())
    (run / STATE).write_text(json.dumps({**state, 'finished': False}))
    before = listing(run)
    assert run_reader(RESUME, run, sample_records) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'other settings' in errors[0], errors
    for words in key_words:
        assert words in errors[0], errors
    assert listing(run) == before


@pytest.mark.slow
def test_a_finished_run_given_export_saved_model_later_exports_it(finished_run, sample_records,
                                                                  tmp_path):
    run = copy_run(finished_run, tmp_path / 'run')
    before = listing(run)
    assert not (run / run_folder.SAVED_MODEL).exists()
    assert run_script('train', f'--records_dir={sample_records}', f'--model_dir={run}',
                      *RUN_FLAGS, '--export_saved_model') == 0
    after = listing(run)
    assert {name: after[name] for name in before} == before
    assert {name.split('/')[0] for name in set(after) - set(before)} == {run_folder.SAVED_MODEL}
    exported = tf.saved_model.load(str(run / run_folder.SAVED_MODEL))
    assert exported.serve(tf.zeros((1, 32, 32, 3), tf.uint8)).shape == (1, 10)
