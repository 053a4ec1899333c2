"""Evaluation, submission and your own images through scripts/evaluate.py and
scripts/predict.py.

No training: the run folder is built directly, the real model with random
weights saved as final.keras and, with another output layer, as best.keras,
beside a config.json in the trainer's format. Expected results are the saved
models' own predictions on the records, computed here without the code
under test.
"""

import csv
import io
import json
import logging
import os
import shutil
import struct
import types
import zlib

import keras
import numpy as np
import pytest
from PIL import Image

from cifar_tfrecord import convert
from cifar_tfrecord import evaluate
from cifar_tfrecord import files
from cifar_tfrecord import model as model_lib
from cifar_tfrecord import plots
from cifar_tfrecord import progress
from cifar_tfrecord import records
from cifar_tfrecord import run_folder
from cifar_tfrecord.config import ConvertConfig, InputConfig, TrainConfig
from cifar_tfrecord.errors import UserInputError
from conftest import run_script

MODEL_FILES = (run_folder.FINAL_MODEL, run_folder.BEST_MODEL)
TRAINER_FILES = (run_folder.METRICS, run_folder.PREDICTIONS)
VALIDATION_IMAGES = 20  # The sample records: 2 per class.
TEST_IMAGES = 12


def write_run_config(run, records_dir):
    """config.json as the trainer writes it, of a run on `records_dir`."""
    manifest = records.load_manifest(records_dir)
    files.write_dataclass(str(run / run_folder.CONFIG), run_folder.RunConfig(
        config=TrainConfig(model_dir=str(run),
                           input=InputConfig(records_dir=records_dir, image_size=32)),
        records=run_folder.TrainedOn(manifest.fingerprint(), manifest.class_names, records_dir),
        mixed_precision='float32', jit_compile=False, strategy='default', replicas=1,
        versions={}, devices=(), command=(), recipe=run_folder.Recipe({}, ())))


def split_arrays(records_dir, split):
    """(ids, images, labels) of a split, in the records' order."""
    ids, images, labels = zip(*records.read_split(records_dir, split))
    return list(ids), np.stack(images), np.array(labels)


@pytest.fixture(scope='module')
def saved_run(sample_records, tmp_path_factory):
    """A run folder as training leaves it, and each model's probabilities.

    The trainer's metrics.json and predictions.npz hold placeholder bytes:
    whatever the scripts do, they must stay as they are.
    """
    run = tmp_path_factory.mktemp('evaluate') / 'run'
    run.mkdir()
    _, validation_images, validation_labels = split_arrays(sample_records, 'validation')
    test_ids, test_images, _ = split_arrays(sample_records, 'test')
    keras.utils.set_random_seed(1)
    model = model_lib.build_model(weights='none', image_size=32, preprocess=True, head_units=16)
    probabilities, heads = {}, {}
    for seed, name in enumerate(MODEL_FILES):
        # Each model its own output layer: one build of ResNet50 serves both.
        output_layer = model.layers[-1]
        kernel, bias = output_layer.get_weights()
        random = np.random.default_rng(seed)
        heads[name] = [random.normal(0, 0.5, kernel.shape), bias]
        output_layer.set_weights(heads[name])
        model.save(str(run / name))
        # One call for both splits: each new batch shape would trace the model again.
        both = model.predict(np.concatenate([validation_images, test_images]), verbose=0)
        probabilities[name] = {'validation': both[:len(validation_images)],
                               'test': both[len(validation_images):]}
    write_run_config(run, sample_records)
    (run / run_folder.METRICS).write_text('the trainer\'s metrics')
    (run / run_folder.PREDICTIONS).write_bytes(b'the trainer\'s predictions')
    return types.SimpleNamespace(path=run, records_dir=sample_records, labels=validation_labels,
                                 test_ids=test_ids, probabilities=probabilities, model=model,
                                 heads=heads)


def model_probabilities(saved_run, model_file, images):
    """What a model of the run gives these images, from the model in memory."""
    saved_run.model.layers[-1].set_weights(saved_run.heads[model_file])
    return saved_run.model(images, training=False).numpy()


def expected_loss(probabilities, labels) -> float:
    chosen = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(chosen, 1e-7, 1.0))))


def listing(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]


def assert_one_error_naming(capsys, *words) -> str:
    """One error line, naming each of `words`."""
    [error] = error_lines(capsys)
    for word in words:
        assert str(word) in error, (word, error)
    return error


def test_the_two_models_predict_differently(saved_run):
    """Otherwise no test here could tell which model a script used."""
    final, best = (saved_run.probabilities[name]['validation'] for name in MODEL_FILES)
    assert expected_loss(final, saved_run.labels) != pytest.approx(
        expected_loss(best, saved_run.labels), rel=1e-3)


# ----------------------------------------------------------------------------
# scripts/evaluate.py: which model, and files that say so.


@pytest.mark.parametrize('model_flag, label, model_file', [
    ([], 'final', run_folder.FINAL_MODEL),                 # The default: the run's model.
    pytest.param(['--model=best'], 'best', run_folder.BEST_MODEL, marks=pytest.mark.slow),
    # A link to best.keras elsewhere.
    pytest.param(['--model=PATH'], 'candidate', run_folder.BEST_MODEL, marks=pytest.mark.slow),
])
def test_evaluate_writes_the_named_models_metrics_and_predictions(
        saved_run, tmp_path, model_flag, label, model_file):
    run = saved_run.path
    candidate = tmp_path / 'candidate.keras'
    os.symlink(run / run_folder.BEST_MODEL, candidate)
    model_flag = [flag.replace('PATH', str(candidate)) for flag in model_flag]
    trainer_files = {name: (run / name).read_bytes() for name in TRAINER_FILES}
    assert run_script('evaluate', f'--model_dir={run}', f'--records_dir={saved_run.records_dir}',
                      *model_flag) == 0
    expected = saved_run.probabilities[model_file]['validation']
    recorded_name = str(candidate) if label == 'candidate' else model_file
    metrics = run_folder.read_metrics(str(run / f'metrics-{label}-validation.json'))
    assert (metrics.model, metrics.split) == (recorded_name, 'validation')
    assert metrics.examples == VALIDATION_IMAGES
    assert metrics.loss == pytest.approx(expected_loss(expected, saved_run.labels), rel=1e-4)
    assert metrics.accuracy == pytest.approx(
        np.mean(expected.argmax(axis=1) == saved_run.labels))
    with np.load(run / f'predictions-{label}-validation.npz') as predictions:
        assert (str(predictions['model']), str(predictions['split'])) == (
            recorded_name, 'validation')
        np.testing.assert_allclose(predictions['probabilities'], expected, rtol=1e-4, atol=1e-6)
        assert predictions['labels'].tolist() == saved_run.labels.tolist()
    for name, content in trainer_files.items():
        assert (run / name).read_bytes() == content, f'evaluate.py overwrote {name}'
    assert_plots_name(run, label, f'{recorded_name} on validation, {VALIDATION_IMAGES} images')


def assert_plots_name(run, label, described):
    """The plots read evaluate.py's files and title their figures with model and split."""
    metrics = plots.load_metrics(str(run / f'metrics-{label}-validation.json'))
    predictions = plots.load_predictions(str(run / f'predictions-{label}-validation.npz'))
    assert described in plots.plot_confusion_matrix(metrics).axes[0].get_title()
    assert described in plots.plot_per_class_accuracy(metrics).axes[0].get_title()
    assert described in plots.plot_samples(predictions, columns=2, rows=1).get_suptitle()


@pytest.mark.parametrize('output_flag', ['--output', '--predictions_output'])
@pytest.mark.parametrize('trainer_file', TRAINER_FILES)
def test_evaluate_refuses_to_overwrite_the_trainers_files(saved_run, capsys, output_flag,
                                                         trainer_file):
    run = saved_run.path
    before = listing(run)
    assert run_script('evaluate', f'--model_dir={run}', f'--records_dir={saved_run.records_dir}',
                      f'{output_flag}={run / trainer_file}') == 1
    assert_one_error_naming(capsys, run / trainer_file, f'the trainer\'s {trainer_file}')
    assert listing(run) == before


# ----------------------------------------------------------------------------
# scripts/predict.py.


@pytest.mark.slow
def test_predict_writes_the_final_models_submission_into_the_run(saved_run, capsys, monkeypatch):
    run = saved_run.path
    monkeypatch.setattr(progress, 'PROGRESS_SECONDS', 0.0)  # A progress line every batch.
    # Recorded at the source: absl's level depends on what ran before in this process.
    lines = []
    monkeypatch.setattr(progress, 'logging', types.SimpleNamespace(
        info=lambda message, *arguments: lines.append(message % arguments)))
    assert run_script('predict', f'--model_dir={run}',
                      f'--records_dir={saved_run.records_dir}', '--batch_size=5') == 0
    assert any(line.startswith(f'test: 5 of {TEST_IMAGES} images predicted (')
               for line in lines), lines
    path = run / 'submission-final.csv'
    assert f'wrote {path}' in capsys.readouterr().out
    lines = path.read_text().splitlines()
    assert lines[0] == 'id,label'
    rows = [line.split(',') for line in lines[1:]]
    assert [int(image_id) for image_id, _ in rows] == list(range(1, TEST_IMAGES + 1))
    expected_classes = saved_run.probabilities[run_folder.FINAL_MODEL]['test'].argmax(axis=1)
    by_id = dict(zip(saved_run.test_ids,
                     (records.CLASS_NAMES[index] for index in expected_classes)))
    assert [label for _, label in rows] == [by_id[image_id] for image_id, _ in rows]


# ----------------------------------------------------------------------------
# Records that do not match the model.


@pytest.fixture(scope='module')
def renamed_class_records(sample_records, tmp_path_factory):
    """The sample records, with a manifest naming one class otherwise."""
    folder = tmp_path_factory.mktemp('renamed') / 'records'
    shutil.copytree(sample_records, folder)
    manifest = json.loads((folder / 'manifest.json').read_text())
    manifest['class_names'] = ['aeroplane', *manifest['class_names'][1:]]
    (folder / 'manifest.json').write_text(json.dumps(manifest))
    return str(folder)


@pytest.mark.parametrize('script', ['evaluate', 'predict'])
def test_records_of_other_classes_are_refused(saved_run, renamed_class_records, capsys, script):
    run = saved_run.path
    before = listing(run)
    assert run_script(script, f'--model_dir={run}',
                      f'--records_dir={renamed_class_records}') == 1
    assert_one_error_naming(capsys, renamed_class_records,
                            ['aeroplane', *records.CLASS_NAMES[1:]], list(records.CLASS_NAMES))
    assert listing(run) == before


@pytest.mark.slow
def test_other_records_of_the_same_classes_warn_and_evaluate(saved_run, tmp_path, caplog):
    """Evaluated with a warning; written where told, and nothing in the run folder."""
    other_records = str(tmp_path / 'other_records')
    convert.convert(ConvertConfig(
        source='sample', output_dir=other_records, sample_images_per_class=8,
        sample_test_images=TEST_IMAGES, num_shards=4, validation_fraction=0.25, seed=1))
    run = saved_run.path
    trained_on = records.load_manifest(saved_run.records_dir).fingerprint()
    given = records.load_manifest(other_records).fingerprint()
    assert trained_on != given
    before = listing(run)
    metrics_path, predictions_path = tmp_path / 'out' / run_folder.METRICS, tmp_path / 'p.npz'
    with caplog.at_level(logging.WARNING):
        assert run_script('evaluate', f'--model_dir={run}', f'--records_dir={other_records}',
                          f'--output={metrics_path}',
                          f'--predictions_output={predictions_path}') == 0
    [warning] = [record.getMessage() for record in caplog.records
                 if record.levelno == logging.WARNING and 'other records' in record.getMessage()]
    for part in (trained_on[:12], given[:12], saved_run.records_dir, other_records):
        assert part in warning
    metrics = run_folder.read_metrics(str(metrics_path))
    assert (metrics.model, metrics.split) == (run_folder.FINAL_MODEL, 'validation')
    assert metrics.examples == VALIDATION_IMAGES
    with np.load(predictions_path) as predictions:
        assert str(predictions['model']) == run_folder.FINAL_MODEL
    assert listing(run) == before


def test_a_model_file_without_a_run_config_is_not_checked(
        saved_run, renamed_class_records, tmp_path, caplog):
    model = tmp_path / 'loose' / run_folder.FINAL_MODEL
    model.parent.mkdir()
    os.symlink(saved_run.path / run_folder.FINAL_MODEL, model)
    with caplog.at_level(logging.WARNING):
        evaluate.check_records(str(model), renamed_class_records, 'validation')
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    # Beside the config.json of a run, the same model refuses those records.
    write_run_config(model.parent, saved_run.records_dir)
    with pytest.raises(UserInputError, match='aeroplane'):
        evaluate.check_records(str(model), renamed_class_records, 'validation')


# ----------------------------------------------------------------------------
# A missing run folder or model.


@pytest.mark.parametrize('script', ['evaluate', 'predict'])
def test_missing_run_folder_is_named(saved_run, tmp_path, capsys, script):
    missing = tmp_path / 'no_such_run'
    assert run_script(script, f'--model_dir={missing}',
                      f'--records_dir={saved_run.records_dir}') == 1
    assert_one_error_naming(capsys, missing, 'no such run folder')
    assert not missing.exists()


@pytest.mark.parametrize('script', ['evaluate', 'predict'])
@pytest.mark.parametrize('model_flag, missing_file', [
    ([], run_folder.FINAL_MODEL), (['--model=best'], run_folder.BEST_MODEL)])
def test_missing_model_file_is_named(saved_run, tmp_path, capsys, script, model_flag,
                                     missing_file):
    run = tmp_path / 'unfinished_run'
    run.mkdir()
    other = {MODEL_FILES[0]: MODEL_FILES[1], MODEL_FILES[1]: MODEL_FILES[0]}[missing_file]
    os.symlink(saved_run.path / other, run / other)
    assert run_script(script, f'--model_dir={run}', f'--records_dir={saved_run.records_dir}',
                      *model_flag) == 1
    assert_one_error_naming(capsys, run, f'has no {missing_file}')
    assert sorted(os.listdir(run)) == [other]


def test_missing_model_path_is_named(saved_run, tmp_path, capsys):
    missing = tmp_path / 'nowhere.keras'
    assert run_script('evaluate', f'--model_dir={saved_run.path}',
                      f'--records_dir={saved_run.records_dir}', f'--model={missing}') == 1
    assert_one_error_naming(capsys, f'--model={missing}', 'no such model file')


# ----------------------------------------------------------------------------
# scripts/predict.py --images: your own image files.


def write_image(path, pixels, mode=None, **options):
    Image.fromarray(pixels, mode).save(path, **options)


def jpeg_bytes(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='JPEG')
    return buffer.getvalue()


@pytest.fixture(scope='module')
def own_images(tmp_path_factory):
    """A folder of image files as people have them: odd sizes and modes, and broken
    ones. Returns the folder, and the reason expected for each broken file."""
    folder = tmp_path_factory.mktemp('own_images')
    random = np.random.default_rng(2)
    write_image(folder / 'tall.png', random.integers(0, 256, (300, 7, 4), np.uint8))  # RGBA
    write_image(folder / 'gray.jpg', random.integers(0, 256, (401, 500), np.uint8), quality=90)
    write_image(folder / 'deep.png', random.integers(0, 65536, (45, 60), np.uint16))  # 16-bit
    palette = Image.fromarray(random.integers(0, 4, (33, 50), np.uint8), 'P')
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 0])
    palette.save(folder / 'palette.png')
    whole = jpeg_bytes(random.integers(0, 256, (64, 64, 3), np.uint8))
    (folder / 'truncated.jpg').write_bytes(whole[:len(whole) // 2])
    (folder / 'notes.jpg').write_bytes(b'not an image\n')
    (folder / 'readme.txt').write_text('a folder gives its PNG and JPEG files only\n')
    broken = {'truncated.jpg': 'unreadable image data (OSError: image file is truncated',
              'notes.jpg': 'not a PNG or JPEG image'}
    return folder, broken


def read_csv_rows(path) -> list[dict]:
    with open(path, newline='') as file:
        return list(csv.DictReader(file))


def check_classified_rows(saved_run, model_file, rows):
    """Each row's top 3 are the model's three most probable classes, in order."""
    images = np.stack([evaluate.load_image_for_model(row['file']) for row in rows])
    expected = model_probabilities(saved_run, model_file, images)
    for row, probabilities in zip(rows, expected):
        top = [(row[f'class_{rank}'], float(row[f'probability_{rank}'])) for rank in (1, 2, 3)]
        assert [name for name, _ in top] == [
            records.CLASS_NAMES[index] for index in np.argsort(-probabilities)[:3]], row
        np.testing.assert_allclose([probability for _, probability in top],
                                   np.sort(probabilities)[::-1][:3], atol=1e-4)
        assert top[0][1] >= top[1][1] >= top[2][1]
        assert sum(probability for _, probability in top) <= 1 + 1e-6
        assert row['error'] == ''


@pytest.mark.slow
def test_predict_classifies_own_images_and_names_the_unreadable(saved_run, own_images, capsys):
    folder, broken = own_images
    run = saved_run.path
    missing = folder / 'missing.png'
    before = listing(run)
    assert run_script('predict', f'--model_dir={run}', f'--images={folder},{missing}') == 1
    output = run / 'image-predictions-final.csv'
    captured = capsys.readouterr()
    rows = read_csv_rows(output)
    assert list(rows[0]) == ['file', 'class_1', 'probability_1', 'class_2', 'probability_2',
                             'class_3', 'probability_3', 'error']
    names = ['deep.png', 'gray.jpg', 'notes.jpg', 'palette.png', 'tall.png', 'truncated.jpg']
    assert [row['file'] for row in rows] == [str(folder / name) for name in names] + [
        str(missing)]
    reasons = {**broken, 'missing.png': 'no such file'}
    failed = [row for row in rows if os.path.basename(row['file']) in reasons]
    for row in failed:
        assert row['error'].startswith(reasons[os.path.basename(row['file'])]), row
        assert all(row[column] == '' for column in list(row)[1:-1])
    check_classified_rows(saved_run, run_folder.FINAL_MODEL,
                          [row for row in rows if row not in failed])
    [error] = [line for line in captured.err.splitlines() if line.startswith('error:')]
    for word in ('3 of 7 images could not be read', output, *(
            f'{row["file"]}: {row["error"]}' for row in failed)):
        assert str(word) in error, (word, error)
    assert set(listing(run)) - set(before) == {output.name}
    assert run_folder.is_run_file(output.name)  # A new run's --overwrite removes it.
    table = captured.out.splitlines()
    assert table[0].split() == ['file', 'top', '1', 'top', '2', 'top', '3']
    for line, row in zip(table[1:], rows):
        if row['error']:
            assert line.split(maxsplit=1) == [row['file'], f'error: {row["error"]}']
        else:
            assert line.split() == [row['file'], *(
                cell for rank in (1, 2, 3)
                for cell in (row[f'class_{rank}'], f'{float(row[f"probability_{rank}"]):.3f}'))]
    assert table[len(rows) + 1] == f'wrote {output}: 7 images, by final.keras'


@pytest.mark.slow
def test_predict_images_by_glob_succeeds_with_the_named_model(saved_run, own_images, tmp_path):
    folder, _ = own_images
    output = tmp_path / 'mine.csv'
    assert run_script('predict', f'--model_dir={saved_run.path}', '--model=best',
                      f'--images={folder}/*.png', f'--output={output}') == 0
    rows = read_csv_rows(output)
    assert [row['file'] for row in rows] == [str(folder / name) for name in
                                             ('deep.png', 'palette.png', 'tall.png')]
    check_classified_rows(saved_run, run_folder.BEST_MODEL, rows)


def test_a_glob_matching_nothing_is_refused_and_nothing_written(saved_run, own_images, capsys):
    folder, _ = own_images
    before = listing(saved_run.path)
    assert run_script('predict', f'--model_dir={saved_run.path}',
                      f'--images={folder}/*.png,{folder}/*.gif') == 1
    assert_one_error_naming(capsys, f'--images={folder}/*.gif', 'no file matches')
    assert listing(saved_run.path) == before


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height grey pixels, with one row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data)))
    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    return (records.PNG_SIGNATURE + chunk(b'IHDR', header)
            + chunk(b'IDAT', zlib.compress(bytes(1 + width))) + chunk(b'IEND', b''))


def _write_whole_and_cut(name, image_format):
    def write(folder):
        buffer = io.BytesIO()
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buffer, format=image_format)
        whole = buffer.getvalue()
        (folder / name).write_bytes(whole[:len(whole) // 2])
        return folder / name
    return write


def _write_bytes(name, data):
    def write(folder):
        (folder / name).write_bytes(data)
        return folder / name
    return write


def _corrupt_png(folder):
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buffer, format='PNG')
    data = bytearray(buffer.getvalue())
    data[60] ^= 0xFF  # Inside the compressed pixels.
    (folder / 'corrupt.png').write_bytes(bytes(data))
    return folder / 'corrupt.png'


def _folder_without_images(folder):
    (folder / 'notes').mkdir()
    (folder / 'notes' / 'readme.txt').write_text('no images here\n')
    return folder / 'notes'


BOMB = ('over the 100,000,000 read here', 'decompression bomb')
BAD_IMAGES = {
    # name: (writes the file into a folder and returns what --images gets, what the one
    # line names besides that path)
    'text': (_write_bytes('notes.png', b'not an image\n'), ['not a PNG or JPEG image']),
    'empty': (_write_bytes('empty.jpg', b''), ['an empty file']),
    'truncated_png': (_write_whole_and_cut('cut.png', 'PNG'),
                      ['unreadable image data', 'OSError', 'image file is truncated']),
    'truncated_jpeg': (_write_whole_and_cut('cut.jpg', 'JPEG'),
                       ['unreadable image data', 'OSError', 'Truncated File Read']),
    'corrupt_png': (_corrupt_png, ['unreadable image data', 'OSError']),
    # Past twice Pillow's limit Pillow refuses; past ours, but under that, we do.
    'bomb': (_write_bytes('bomb.png', png_declaring(50_000, 50_000)),
             ['declares 2,500,000,000 pixels', *BOMB]),
    'large': (_write_bytes('large.png', png_declaring(12_000, 9_000)),
              ['declares 12,000 x 9,000 pixels', *BOMB]),
    'missing': (lambda folder: folder / 'missing.png', ['no such file']),
    'no_images': (_folder_without_images, ['--images=', 'a folder without PNG or JPEG files']),
    'no_match': (lambda folder: folder / '*.gif', ['--images=', 'no file matches']),
}


@pytest.mark.parametrize('case', BAD_IMAGES)
def test_an_image_that_cannot_be_read_is_one_line_naming_it_and_nothing_is_written(
        saved_run, tmp_path, capsys, case):
    write, words = BAD_IMAGES[case]
    path = write(tmp_path)
    before = listing(saved_run.path)
    assert run_script('predict', f'--model_dir={saved_run.path}', f'--images={path}') == 1
    captured = capsys.readouterr()
    [error] = [line for line in captured.err.splitlines() if line.startswith('error:')]
    for word in (path, *words):
        assert str(word) in error, (word, error)
    assert 'Traceback' not in captured.err and captured.out == ''
    assert listing(saved_run.path) == before


def test_when_no_image_can_be_read_the_line_names_each(saved_run, tmp_path, capsys):
    paths = [write(tmp_path) for write, _ in (BAD_IMAGES['text'], BAD_IMAGES['empty'])]
    before = listing(saved_run.path)
    assert run_script('predict', f'--model_dir={saved_run.path}',
                      f'--images={",".join(map(str, paths))}') == 1
    assert_one_error_naming(capsys, 'none of the 2 images could be read', paths[0],
                            'not a PNG or JPEG image', paths[1], 'an empty file')
    assert listing(saved_run.path) == before


# The function that reads an image for the model, on known input.


def test_a_large_uniform_image_resizes_to_its_colour(tmp_path):
    path = tmp_path / 'large.png'
    write_image(path, np.full((480, 640, 3), (200, 30, 60), np.uint8))
    image = evaluate.load_image_for_model(str(path))
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.unique(image.reshape(-1, 3), axis=0).tolist() == [[200, 30, 60]]


def test_transparency_shows_white(tmp_path):
    # Left half fully transparent (black beneath), right half opaque blue.
    pixels = np.zeros((320, 320, 4), np.uint8)
    pixels[:, 160:] = (0, 0, 255, 255)
    write_image(tmp_path / 'rgba.png', pixels)
    image = evaluate.load_image_for_model(str(tmp_path / 'rgba.png'))
    # Lanczos mixes only the few columns next to the edge (column 16).
    assert np.unique(image[:, :12].reshape(-1, 3), axis=0).tolist() == [[255, 255, 255]]
    assert np.unique(image[:, 20:].reshape(-1, 3), axis=0).tolist() == [[0, 0, 255]]
    write_image(tmp_path / 'half.png', np.full((50, 50, 4), (255, 0, 0, 128), np.uint8))
    half = evaluate.load_image_for_model(str(tmp_path / 'half.png'))
    # 128/255 red over white: (255, 127, 127), within PIL's rounding.
    np.testing.assert_allclose(half.reshape(-1, 3), [[255, 127, 127]] * 32 * 32, atol=1)


def test_sixteen_bit_palette_and_rotated_images_come_out_as_seen(tmp_path):
    # 16-bit grayscale is scaled, not clipped at 255 (PIL's own conversion).
    write_image(tmp_path / 'deep.png', np.full((40, 50), 257 * 100, np.uint16))
    assert np.unique(evaluate.load_image_for_model(str(tmp_path / 'deep.png'))).tolist() == [100]
    palette = Image.fromarray(np.full((40, 50), 1, np.uint8), 'P')
    palette.putpalette([0, 0, 0, 10, 200, 30])
    palette.save(tmp_path / 'palette.png')
    assert np.unique(evaluate.load_image_for_model(str(tmp_path / 'palette.png')).reshape(-1, 3),
                     axis=0).tolist() == [[10, 200, 30]]
    # A camera's JPEG stored sideways, with EXIF orientation 6: turn it 90° clockwise.
    sideways = np.zeros((64, 128, 3), np.uint8)
    sideways[:, :64] = (255, 0, 0)  # Left half red: the top once turned.
    exif = Image.Exif()
    exif[0x0112] = 6
    write_image(tmp_path / 'sideways.jpg', sideways, exif=exif, quality=95)
    turned = evaluate.load_image_for_model(str(tmp_path / 'sideways.jpg')).astype(int)
    assert turned[:12, :, 0].min() > 200 and turned[20:, :, 0].max() < 50


def test_missing_and_broken_files_raise_one_line_naming_them(own_images):
    folder, broken = own_images
    for name, reason in {**broken, 'missing.png': 'no such file'}.items():
        with pytest.raises(evaluate.UnreadableImageError) as raised:
            evaluate.load_image_for_model(str(folder / name))
        assert str(folder / name) in str(raised.value) and reason in raised.value.reason
        assert '\n' not in str(raised.value)
