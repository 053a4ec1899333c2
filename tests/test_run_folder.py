"""The run folder's layout: names, which files a run owns, and every script
that reads a run refusing a damaged file of it in one line, changing nothing.
"""

import json
import os
import shutil

import pytest

from cifar_tfrecord import run_folder
from conftest import SMALL_TRAINING, run_script


@pytest.mark.parametrize('name, is_run_file', [
    ('history.csv', True), ('backup/', True), ('metrics-best-validation.json', True),
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
    path = run / 'final.keras'
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[:len(data) // 2])


def _damaged_backup(run):
    """An unfinished run whose state.json names a backup of garbage bytes."""
    (run / 'backup').mkdir()
    (run / 'backup' / 'epoch-0002.weights.h5').write_bytes(b'\x89HDF\r\n\x1a\n' + b'?' * 64)
    state = json.loads((run / 'state.json').read_text())
    state.update(finished=False, backup='backup/epoch-0002.weights.h5')
    (run / 'state.json').write_text(json.dumps(state))


PLOT, RESUME, EVALUATE, PREDICT = 'plot', 'resume', 'evaluate', 'predict'
STATE_SAYS_DONE = ', which {run}/state.json says is done'
CONFIG_KEYS = 'the keys there are '  # The start of the list of a dataclass's fields.
BAD_RUN_FILES = {
    # name: (file, spoiling, {script: what the line says after the file's path})
    'history_cut_mid_row': ('history.csv', _rewrite('history.csv', _cut_mid_row), {
        PLOT: ' line 3: 5 values for 9 columns', RESUME: ' line 3: 5 values for 9 columns'}),
    'history_empty': ('history.csv', _write_bytes('history.csv', b''), {
        PLOT: ' is empty, without even its header', RESUME: ' is empty, without even its header'}),
    'history_header_only': ('history.csv', _rewrite('history.csv', lambda text: text.split(
        '\n')[0] + '\n'), {PLOT: ' has no epochs yet: has this run finished an epoch?',
                           RESUME: ' has no row for epoch 1' + STATE_SAYS_DONE}),
    'history_non_number': ('history.csv', _rewrite('history.csv', _non_number), {
        PLOT: " line 2: loss='low' is not a number",
        RESUME: " line 2: loss='low' is not a number"}),
    'config_truncated': ('config.json', _rewrite('config.json', _half), {
        RESUME: ' is not valid JSON: ', EVALUATE: ' is not valid JSON: ',
        PREDICT: ' is not valid JSON: '}),
    'config_not_text': ('config.json', _write_bytes('config.json', b'{"config": "\xff\xfe"}'), {
        RESUME: ' is not UTF-8 text: ', EVALUATE: ' is not UTF-8 text: ',
        PREDICT: ' is not UTF-8 text: '}),
    'config_missing_key': ('config.json', _edit_json('config.json', lambda saved: saved.pop(
        'config')), {RESUME: ': lacks the key config', EVALUATE: ': lacks the key config',
                     PREDICT: ': lacks the key config'}),
    'config_wrong_type': ('config.json', _edit_json('config.json', lambda saved: saved[
        'config']['input'].update(image_size='32')), {
        key: ': config.input.image_size must be a whole number, not "32"'
        for key in (RESUME, EVALUATE, PREDICT)}),
    'config_unknown_key': ('config.json', _edit_json('config.json', lambda saved: saved[
        'config']['input'].update(colour='red')), {
        key: ': has an unknown key config.input.colour (' + CONFIG_KEYS
        for key in (RESUME, EVALUATE, PREDICT)}),
    'config_bad_value': ('config.json', _edit_json('config.json', lambda saved: saved[
        'config']['input'].update(normalization='zscore')), {
        key: ': config holds --normalization=zscore: use caffe or unit'
        for key in (RESUME, EVALUATE, PREDICT)}),
    'config_records_fingerprint': ('config.json', _edit_json(
        'config.json', lambda saved: saved['records'].update(fingerprint=12)), {
        key: ': records.fingerprint must be a string, not 12' for key in (RESUME, EVALUATE,
                                                                          PREDICT)}),
    'state_truncated': ('state.json', _rewrite('state.json', _half), {
        RESUME: ' is not valid JSON: '}),
    'state_missing_key': ('state.json', _edit_json('state.json', lambda state: state.pop(
        'finished')), {RESUME: ': lacks the key finished'}),
    'state_wrong_type': ('state.json', _edit_json('state.json', lambda state: state.update(
        epochs_done='2')), {RESUME: ': epochs_done must be a whole number, not "2"'}),
    'best_truncated': ('best.json', _rewrite('best.json', _half), {
        RESUME: ' is not valid JSON: '}),
    'metrics_truncated': ('metrics.json', _rewrite('metrics.json', _half), {
        PLOT: ' is not valid JSON: ', RESUME: ' is not valid JSON: '}),  # Then how to go on.
    'metrics_missing_key': ('metrics.json', _edit_json('metrics.json', lambda metrics: metrics.pop(
        'accuracy')), {PLOT: ' lacks accuracy', RESUME: ': lacks the key accuracy'}),
    'backup_damaged': ('backup/epoch-0002.weights.h5', _damaged_backup, {
        RESUME: " cannot be read as this run's weights ("}),
    'model_cut': ('final.keras', _cut_model, {
        script: ' is not a readable Keras model: not a whole zip archive (truncated or damaged)'
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
    expected = f'error: {run / name}' + messages[script].format(run=run)
    assert len(errors) == 1 and errors[0].startswith(expected), errors
    assert 'Traceback' not in captured.err
    assert listing(run) == before


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


def test_a_run_without_its_config_is_not_started_over(finished_run, sample_records, tmp_path,
                                                      capsys):
    run = copy_run(finished_run, tmp_path / 'run')
    (run / 'config.json').unlink()
    before = listing(run)
    assert run_reader(RESUME, run, sample_records) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert errors == [
        f'error: {run / "config.json"} is missing, yet {run} holds a run (state.json, '
        'history.csv, best.keras, final.keras): pass --overwrite to start afresh, or choose '
        'another --model_dir']
    assert listing(run) == before
