"""Evaluation, predictions for plots, and the Kaggle submission file.

Every result says what it comes from: metrics and predictions record their
model (`run_folder.model_name`) and split, and scripts/evaluate.py and
predict.py write files named after both (run_folder.py names them). Only the
trainer writes metrics.json and predictions.npz, always of final.keras.
"""

import csv
import dataclasses
import io
import json
import os
import posixpath
import re
import warnings
import zipfile

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from cifar_tfrecord import config as config_lib
from cifar_tfrecord import files
from cifar_tfrecord import model as model_lib
from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord import run_folder
from cifar_tfrecord import sources
from cifar_tfrecord.callbacks import write_text_atomically
from cifar_tfrecord.config import InputConfig
from cifar_tfrecord.errors import UserInputError, describe
from cifar_tfrecord.progress import Progress

SAMPLE_COUNT = 256
# Enough of a sha256 to tell two records folders apart in a log line.
FINGERPRINT_SHOWN = 12


# ----------------------------------------------------------------------------
# Which model, on which records.


def resolve_model(model_dir: str, model: str) -> str:
    """The model file `--model` names ('final', 'best' or a path), checked to exist."""
    path = run_folder.model_path(model_dir, model)
    if model in run_folder.MODELS:
        if not tf.io.gfile.isdir(model_dir):
            raise UserInputError(f'{model_dir}: no such run folder')
        if not tf.io.gfile.exists(path):
            raise UserInputError(f'{model_dir} has no {run_folder.MODELS[model]}')
    elif not tf.io.gfile.exists(path):
        raise UserInputError(f'--model={model}: no such model file')
    return path


def load_run_config(model_path: str) -> dict | None:
    """The config.json of the run folder holding a model, checked
    (`config.read_run_config`), or None if it has none."""
    path = run_folder.path(os.path.dirname(model_path), run_folder.CONFIG)
    if not tf.io.gfile.exists(path):
        return None
    return config_lib.read_run_config(path)


def check_records(model_path: str, records_dir: str) -> None:
    """Refuses records of other classes than the model's; warns on other records.

    The run's config.json says which records it trained on (its "records":
    fingerprint, class_names, records_dir). A run without that key, or one
    of them, from before it was written, is not checked on it.
    """
    trained_on = (load_run_config(model_path) or {}).get('records')
    if trained_on is None:
        return
    manifest = records.load_manifest(records_dir)
    class_names = trained_on.get('class_names', manifest.class_names)
    if list(manifest.class_names) != list(class_names):
        raise UserInputError(
            f'{records_dir} holds the classes {list(manifest.class_names)}, but {model_path} '
            f'was trained on {list(class_names)}')
    fingerprint = manifest.fingerprint()
    if fingerprint != trained_on.get('fingerprint', fingerprint):
        logging.warning(
            '%s was trained on the records in %s (fingerprint %s); %s holds other records '
            '(fingerprint %s) of the same classes: going on with them',
            model_path, trained_on.get('records_dir', 'another folder'),
            trained_on['fingerprint'][:FINGERPRINT_SHOWN],
            records_dir, fingerprint[:FINGERPRINT_SHOWN])


def resolve_split(records_dir: str, split: str) -> str:
    """'auto': the test split when its images are labelled, else validation."""
    manifest = records.load_manifest(records_dir)
    if split != 'auto':
        if split not in manifest.splits:
            raise UserInputError(f'split {split!r} is not in {records_dir}')
        if 'unknown' in manifest.splits[split].class_counts:
            raise UserInputError(f'split {split!r} of {records_dir} has unlabelled images')
        return split
    test = manifest.splits.get('test')
    return 'test' if test and 'unknown' not in test.class_counts else 'validation'


# ----------------------------------------------------------------------------
# Evaluation.


def evaluate(model: keras.Model, config: InputConfig, split: str, model_name: str) -> dict:
    """Accuracy, loss, per-class accuracy and confusion matrix on a split.

    Args:
        model: takes uint8 32x32 images (`load_serving_model`).
        config: where and how to read the records.
        split: a labelled split.
        model_name: what the metrics record as their model
            (`run_folder.model_name`).
    """
    dataset, count = pipeline.make_dataset(config, split, training=False)
    labels = np.concatenate([np.argmax(targets, axis=1) for _, targets in dataset])
    # steps: the dataset's length, so Keras shows progress out of a total and
    # does not take its end for a shortage of data.
    probabilities = model.predict(dataset.map(lambda images, _: images), verbose='auto',
                                  steps=pipeline.evaluation_steps(count, config.batch_size))
    return compute_metrics(probabilities, labels, split, model_name)


def compute_metrics(probabilities: np.ndarray, labels: np.ndarray, split: str,
                    model_name: str) -> dict:
    predicted = np.argmax(probabilities, axis=1)
    confusion = np.zeros((records.NUM_CLASSES, records.NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    chosen = probabilities[np.arange(len(labels)), labels]
    return {
        'model': model_name,
        'split': split,
        'examples': int(len(labels)),
        'accuracy': float(np.mean(predicted == labels)),
        'loss': float(-np.mean(np.log(np.clip(chosen, 1e-7, 1.0)))),
        'class_names': list(records.CLASS_NAMES),
        'per_class_accuracy': {name: float(value)
                               for name, value in zip(records.CLASS_NAMES, per_class)},
        'confusion_matrix': confusion.tolist(),
    }


def write_json(path: str, metrics: dict) -> None:
    _make_parent_folder(path)
    write_text_atomically(path, json.dumps(metrics, indent=2) + '\n')


def write_predictions(path: str, serving: keras.Model, records_dir: str, split: str,
                      model_name: str, count: int = SAMPLE_COUNT) -> str:
    """The first images of a split with a model's predictions, as an .npz file.

    Arrays: images, labels, probabilities and class_names for the plots, and
    model and split (strings) saying whose predictions on what they are.

    Returns:
        `path`.
    """
    examples = [example for example, _ in zip(records.read_split(records_dir, split), range(count))]
    images = np.stack([image for _, image, _ in examples])
    probabilities = serving.predict(images, verbose=0)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=np.array([label for *_, label in examples]),
                        probabilities=probabilities.astype(np.float32),
                        class_names=np.array(records.CLASS_NAMES),
                        model=np.array(model_name), split=np.array(split))
    _make_parent_folder(path)
    with tf.io.gfile.GFile(path, 'wb') as file:
        file.write(buffer.getvalue())
    return path


def evaluate_model(model_dir: str, model: str, records_dir: str, split: str = 'auto',
                   batch_size: int = 256, metrics_output: str | None = None,
                   predictions_output: str | None = None) -> tuple[dict, list[str]]:
    """Evaluates a model of a run and writes its metrics and predictions.

    Args:
        model_dir: the run folder.
        model: 'final' (the run's model), 'best', or a path to a .keras file.
        records_dir, split: the records to evaluate on; 'auto' as in
            `resolve_split`.
        metrics_output, predictions_output: where to write; by default
            `run_folder.evaluation_metrics` and `evaluation_predictions`,
            never the trainer's metrics.json and predictions.npz.

    Returns:
        The metrics, and the paths written. Nothing is written on bad input.
    """
    model_path = resolve_model(model_dir, model)
    check_records(model_path, records_dir)
    split = resolve_split(records_dir, split)
    records.present_shard_paths(records_dir, split, records.load_manifest(records_dir))
    defaults = [run_folder.evaluation_metrics(model_dir, model_path, split),
                run_folder.evaluation_predictions(model_dir, model_path, split)]
    outputs = [metrics_output or defaults[0], predictions_output or defaults[1]]
    _refuse_trainer_files(outputs, defaults, [model_dir, os.path.dirname(model_path)])
    serving = load_serving_model(model_path)
    config = InputConfig(records_dir=records_dir, batch_size=batch_size, upsample_on='device')
    metrics = evaluate(serving, config, split, run_folder.model_name(model))
    write_json(outputs[0], metrics)
    write_predictions(outputs[1], serving, records_dir, split, metrics['model'])
    return metrics, outputs


def _refuse_trainer_files(outputs: list[str], defaults: list[str],
                          run_folders: list[str]) -> None:
    """Keeps the trainer's metrics.json and predictions.npz as the trainer wrote them."""
    trainer_files = {_canonical(run_folder.path(folder, name)): name
                     for folder in run_folders
                     for name in (run_folder.METRICS, run_folder.PREDICTIONS)}
    for output, default in zip(outputs, defaults):
        name = trainer_files.get(_canonical(output))
        if name:
            raise UserInputError(
                f'{output} is the trainer\'s {name} of {run_folder.FINAL_MODEL}, never '
                f'overwritten: write elsewhere, by default {default}')


def _canonical(path: str) -> str:
    return posixpath.normpath(path) if files.is_remote(path) else os.path.realpath(path)


def _make_parent_folder(path: str) -> None:
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)


# ----------------------------------------------------------------------------
# The Kaggle submission.


def write_submission(serving: keras.Model, records_dir: str, output: str,
                     batch_size: int = 256) -> int:
    """Kaggle's submission CSV: `id,label` with class names, sorted by id.

    Returns:
        The number of rows written.
    """
    predictions = {}
    # Kaggle's own test set has 300,000 images: say how far it got.
    tracker = Progress('test', unit='images predicted')
    total = records.load_manifest(records_dir).splits['test'].num_examples
    for images, ids in pipeline.make_prediction_dataset(records_dir, 'test', batch_size):
        classes = np.argmax(serving.predict_on_batch(images), axis=1)
        for image_id, class_index in zip(ids.numpy(), classes):
            predictions[image_id.decode()] = records.CLASS_NAMES[class_index]
        tracker.update(len(classes), total)
    tracker.done()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['id', 'label'])
    for image_id in sorted(predictions, key=sources.id_sort_key):
        writer.writerow([image_id, predictions[image_id]])
    _make_parent_folder(output)
    write_text_atomically(output, buffer.getvalue())
    return len(predictions)


def predict_submission(model_dir: str, model: str, records_dir: str, output: str | None = None,
                       batch_size: int = 256) -> tuple[str, int]:
    """Writes the submission of a model of a run on the test records.

    Args:
        model_dir: the run folder.
        model: 'final' (the run's model), 'best', or a path to a .keras file.
        records_dir: records with a test split.
        output: the CSV to write; by default `run_folder.submission`.

    Returns:
        The path written and its number of rows.
    """
    model_path = resolve_model(model_dir, model)
    check_records(model_path, records_dir)
    records.present_shard_paths(records_dir, 'test', records.load_manifest(records_dir))
    output = output or run_folder.submission(model_dir, model_path)
    rows = write_submission(load_serving_model(model_path), records_dir, output, batch_size)
    return output, rows


# ----------------------------------------------------------------------------
# Your own images.

IMAGE_FORMATS = ('PNG', 'JPEG')
# The largest image read, as its header declares it: a 100-megapixel photo
# decodes to 300 MB. Larger ones are refused before decoding, as a file of a
# few kilobytes can declare billions of pixels (a decompression bomb).
MAX_IMAGE_PIXELS = 100_000_000
# Of the files that cannot be read, how many the error line names.
UNREADABLE_NAMED = 3
# The files a folder given to --images contributes; named files and glob
# matches are read whatever their names.
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
# What shows through transparent pixels: white, as on most pages and viewers.
BACKGROUND = (255, 255, 255)
TOP_CLASSES = 3
IMAGES_COLUMNS = ('file', *(f'{column}_{rank}' for rank in range(1, TOP_CLASSES + 1)
                            for column in ('class', 'probability')), 'error')


class UnreadableImageError(UserInputError):
    """An image file that cannot be classified, and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f'{path}: {reason}')
        self.reason = reason


def load_image_for_model(path: str) -> np.ndarray:
    """A PNG or JPEG file as the models take it: uint8 RGB, 32x32x3.

    Feed the SavedModel what this returns (stacked into a batch). Any size
    and mode: EXIF orientation applied; 16-bit values scaled to 8 bits;
    transparency composited over white; palette, grayscale and CMYK to RGB.
    Then the whole image, stretched to a square (nothing cut off), is resized
    with PIL's `Image.resize((32, 32), Image.Resampling.LANCZOS)`: PIL widens
    the filter by the reduction factor, so every pixel of a large photo
    counts (antialiasing), and Lanczos keeps edges sharper than a box or
    bilinear filter does, on the way down and the way up.

    Raises:
        UnreadableImageError: a missing file, or one that is not a whole PNG
            or JPEG image.
    """
    if not tf.io.gfile.exists(path):
        raise UnreadableImageError(path, 'no such file')
    if tf.io.gfile.isdir(path):
        raise UnreadableImageError(path, 'is a folder')
    if tf.io.gfile.stat(path).length == 0:
        raise UnreadableImageError(path, 'an empty file')
    # Read as the decoder asks: a large file that is no image costs its first bytes only.
    with files.open_file(path) as file:
        try:
            with _open_image(path, file) as image:
                image.load()
                image = _to_rgb(image)
        except UnreadableImageError:
            raise
        except UnidentifiedImageError as error:
            raise UnreadableImageError(path, 'not a PNG or JPEG image') from error
        except Exception as error:  # PIL's decoders fail in many ways: OSError, SyntaxError ...
            raise UnreadableImageError(
                path, f'unreadable image data ({describe(error)})') from error
    height, width, _ = records.IMAGE_SHAPE
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)


def _open_image(path: str, file) -> Image.Image:
    """The image of a file, its header read and its size checked; not decoded."""
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own limit; the size is checked below, against ours.
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            image = Image.open(file, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as error:
        # Past twice its limit Pillow refuses before we see the size; its
        # message has the number of pixels.
        pixels = re.search(r'\((\d+) pixels\)', str(error))
        raise UnreadableImageError(path, _too_large(
            f'{int(pixels[1]):,} pixels' if pixels else 'more pixels')) from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise UnreadableImageError(path, _too_large(f'{width:,} x {height:,} pixels'))
    return image


def _too_large(size: str) -> str:
    return (f'declares {size}, over the {MAX_IMAGE_PIXELS:,} read here: refused before '
            'decoding (a decompression bomb?)')


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith('I'):
        # 16-bit grayscale: PIL's own conversion would clip at 255, not scale.
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    if image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in image.info:
        image = image.convert('RGBA')
        background = Image.new('RGBA', image.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(background, image)
    return image.convert('RGB')


def list_images(patterns: list[str]) -> list[str]:
    """The image files that --images names: files, folders, or globs.

    A folder gives its PNG and JPEG files (by name, not its subfolders); a
    glob, the files it matches. A named file is kept even when missing, to
    be reported with the others. Each file once, in the order given, the
    files of a folder or glob sorted.

    Raises:
        UserInputError: a glob that matches no file, or a folder without
            images; nothing can be classified from them.
    """
    paths = []
    for pattern in patterns:
        if any(character in pattern for character in '*?['):
            matches = [match for match in sorted(tf.io.gfile.glob(pattern))
                       if not tf.io.gfile.isdir(match)]
            if not matches:
                raise UserInputError(f'--images={pattern}: no file matches')
        elif tf.io.gfile.isdir(pattern):
            matches = [os.path.join(pattern, name)
                       for name in sorted(tf.io.gfile.listdir(pattern))
                       if name.lower().endswith(IMAGE_SUFFIXES)]
            if not matches:
                raise UserInputError(f'--images={pattern}: a folder without PNG or JPEG files')
        else:
            matches = [pattern]
        paths.extend(match for match in matches if match not in paths)
    return paths


@dataclasses.dataclass(frozen=True)
class ImagePrediction:
    """One file's top classes, most probable first; or why it has none."""
    file: str
    top: tuple[tuple[str, float], ...] = ()
    error: str | None = None


def load_images(paths: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each file as the model takes it (`load_image_for_model`), or why it cannot be."""
    images, errors = {}, {}
    for path in paths:
        try:
            images[path] = load_image_for_model(path)
        except UnreadableImageError as error:
            errors[path] = error.reason
    return images, errors


def classify_images(serving: keras.Model, paths: list[str],
                    batch_size: int = 256) -> list[ImagePrediction]:
    """Each file's top classes, in the order of `paths`; unreadable files say why."""
    return classify_loaded(serving, paths, *load_images(paths), batch_size)


def classify_loaded(serving: keras.Model, paths: list[str], images: dict[str, np.ndarray],
                    errors: dict[str, str], batch_size: int = 256) -> list[ImagePrediction]:
    """`classify_images` of the images and errors `load_images` gave."""
    probabilities = {}
    if images:
        batch = np.stack(list(images.values()))
        probabilities = dict(zip(images, serving.predict(batch, batch_size=batch_size,
                                                         verbose=0)))
    return [ImagePrediction(path, top=_top_classes(probabilities[path]))
            if path in probabilities else ImagePrediction(path, error=errors[path])
            for path in paths]


def describe_unreadable(errors: dict[str, str]) -> str:
    """The first few unreadable files with their reasons, in one line."""
    named = [f'{path}: {reason}' for path, reason in list(errors.items())[:UNREADABLE_NAMED]]
    more = len(errors) - len(named)
    return '; '.join(named) + (f'; and {more} more' if more else '')


def unreadable_summary(predictions: list['ImagePrediction'], output: str) -> str | None:
    """The error line of a classification some of whose files could not be
    read; None when every file was classified."""
    errors = {prediction.file: prediction.error for prediction in predictions
              if prediction.error is not None}
    if not errors:
        return None
    return (f'{len(errors)} of {len(predictions)} images could not be read '
            f'({describe_unreadable(errors)}); their rows in {output} say why')


def _top_classes(probabilities: np.ndarray) -> tuple[tuple[str, float], ...]:
    order = np.argsort(-probabilities, kind='stable')[:TOP_CLASSES]
    return tuple((records.CLASS_NAMES[index], float(probabilities[index])) for index in order)


def write_image_predictions(path: str, predictions: list[ImagePrediction]) -> None:
    """The CSV of IMAGES_COLUMNS: a row per file, its error empty when classified."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(IMAGES_COLUMNS)
    for prediction in predictions:
        cells = [cell for name, probability in prediction.top
                 for cell in (name, f'{probability:.6f}')]
        cells += [''] * (2 * TOP_CLASSES - len(cells))
        writer.writerow([prediction.file, *cells, prediction.error or ''])
    _make_parent_folder(path)
    write_text_atomically(path, buffer.getvalue())


def format_image_table(predictions: list[ImagePrediction]) -> str:
    """The predictions as a console table: file, then each top class with its probability."""
    width = max(len('file'), *(len(prediction.file) for prediction in predictions))
    lines = ['  '.join(['file'.ljust(width), *(f'top {rank}'.ljust(16)
                                                for rank in range(1, TOP_CLASSES + 1))]).rstrip()]
    for prediction in predictions:
        cells = ([f'{name} {probability:.3f}'.ljust(16) for name, probability in prediction.top]
                 if prediction.error is None else [f'error: {prediction.error}'])
        lines.append('  '.join([prediction.file.ljust(width), *cells]).rstrip())
    return '\n'.join(lines)


def predict_images(model_dir: str, model: str, images: list[str], output: str | None = None,
                   batch_size: int = 256) -> tuple[str, list[ImagePrediction]]:
    """Classifies image files with a model of a run and writes the CSV.

    Args:
        model_dir: the run folder.
        model: 'final' (the run's model), 'best', or a path to a .keras file.
        images: files, folders or globs (`list_images`).
        output: the CSV to write; by default `run_folder.images_predictions`.

    Returns:
        The path written, and each file's prediction or error. Nothing is
        written when a glob matches nothing, no file can be read, or the
        model is missing.

    Raises:
        UserInputError: no file could be read, naming them and why; or a
            glob, folder or model as `list_images` and `resolve_model` say.
    """
    model_path = resolve_model(model_dir, model)
    paths = list_images(images)
    output = output or run_folder.images_predictions(model_dir, model_path)
    loaded, errors = load_images(paths)  # Before the model: bad files fail fast.
    if not loaded:
        raise UserInputError(describe_unreadable(errors) if len(errors) == 1 else
                             f'none of the {len(errors)} images could be read: '
                             f'{describe_unreadable(errors)}')
    predictions = classify_loaded(load_serving_model(model_path), paths, loaded, errors,
                                  batch_size)
    write_image_predictions(output, predictions)
    return output, predictions


# ----------------------------------------------------------------------------
# Loading a saved model.


def load_serving_model(model_path: str) -> keras.Model:
    """A saved .keras model, wrapped to take uint8 32x32 images.

    Models trained with host-side preprocessing get the same preprocessing
    back from the run's config.json beside them.
    """
    if not tf.io.gfile.exists(model_path):
        raise UserInputError(f'model {model_path} not found')
    input_config = _run_input_config(load_run_config(model_path))  # Before the long load.
    if not files.is_remote(model_path) and os.path.isfile(model_path) and not zipfile.is_zipfile(
            model_path):
        # Keras says "File not found" of a .keras file cut short.
        raise UserInputError(f'{model_path} is not a readable Keras model: not a whole zip '
                             'archive (truncated or damaged)')
    try:
        model = keras.saving.load_model(model_path, safe_mode=True)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as error:
        # A truncated or damaged file: Keras names no file in its errors.
        first_line = str(error).strip().split('\n', 1)[0]
        raise UserInputError(f'{model_path} is not a readable Keras model '
                             f'({type(error).__name__}: {first_line})') from None
    return model_lib.with_preprocessing(
        model, input_config.normalization, input_config.upsample_method)


def export_saved_model(serving: keras.Model, path: str) -> None:
    """`serving` as a SavedModel whose `serve(images)` (and serving_default
    signature) takes uint8 32x32 images and returns class probabilities.

    Not `Model.export`: Keras 3.15 writes every weight twice there, once per
    wrapper of the same variable (keras-team/keras#23553), 94 MB too many for
    ResNet50. Tracking the TensorFlow variables themselves writes each once.
    """
    module = tf.Module()
    module.model_variables = [variable.value for variable in serving.variables]
    module.serve = tf.function(
        lambda images: serving(images, training=False),
        input_signature=[tf.TensorSpec([None, *serving.input_shape[1:]], serving.input.dtype,
                                       name='images')])
    tf.saved_model.save(module, path, signatures={'serving_default': module.serve})


def _run_input_config(run_config: dict | None) -> InputConfig:
    return InputConfig(**run_config['config'].get('input', {})) if run_config else InputConfig()
