"""Evaluation, predictions for plots, the Kaggle submission, and your own images.

Results record their model (`run_folder.model_name`) and split. Only the
trainer writes metrics.json and predictions.npz, always of final.keras.
"""

import csv
import dataclasses
import io
import itertools
import os
import posixpath
import re
import warnings
import zipfile

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar_tfrecord import files
from cifar_tfrecord import model as model_lib
from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord import run_folder
from cifar_tfrecord import sources
from cifar_tfrecord.config import InputConfig
from cifar_tfrecord.errors import UserInputError, describe
from cifar_tfrecord.progress import Progress

SAMPLE_COUNT = 256
# Enough of a sha256 to tell two records folders apart in a log line.
FINGERPRINT_SHOWN = 12


# ----------------------------------------------------------------------------
# Models, and the records they run on.


def resolve_model(model_dir: str, model: str) -> str:
    """The model file `--model` names ('final', 'best' or a path), checked to exist."""
    path = run_folder.model_path(model_dir, model)
    if model in run_folder.MODELS:
        if not files.isdir(model_dir):
            raise UserInputError(f'{model_dir}: no such run folder')
        if not files.exists(path):
            raise UserInputError(f'{model_dir} has no {run_folder.MODELS[model]}')
    elif not files.exists(path):
        raise UserInputError(f'--model={model}: no such model file')
    return path


def load_run_config(model_path: str) -> run_folder.RunConfig | None:
    """The config.json beside a model, checked; None beside a model file of its own."""
    model_dir = os.path.dirname(model_path)
    if files.exists(os.path.join(model_dir, run_folder.CONFIG)):
        return run_folder.read_run_config(model_dir)
    return None


def check_records(model_path: str, records_dir: str, split: str) -> None:
    """Refuses records of other classes than the model's, and missing or damaged
    shards of `split`; warns on other records of the same classes than those
    the run's config.json names."""
    manifest = records.load_manifest(records_dir)
    run_config = load_run_config(model_path)
    if run_config is not None:
        trained_on = run_config.records
        if manifest.class_names != trained_on.class_names:
            raise UserInputError(
                f'{records_dir} holds the classes {list(manifest.class_names)}, but '
                f'{model_path} was trained on {list(trained_on.class_names)}')
        fingerprint = manifest.fingerprint()
        if fingerprint != trained_on.fingerprint:
            logging.warning(
                '%s was trained on the records in %s (fingerprint %s); %s holds other records '
                '(fingerprint %s) of the same classes: going on with them',
                model_path, trained_on.records_dir, trained_on.fingerprint[:FINGERPRINT_SHOWN],
                records_dir, fingerprint[:FINGERPRINT_SHOWN])
    records.check_shards(records_dir, manifest, records.FIRST_RECORD, [split])


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


def load_serving_model(model_path: str) -> keras.Model:
    """A saved .keras model, wrapped to take uint8 32x32 images, with the
    host-side preprocessing the run's config.json beside it names."""
    if not files.exists(model_path):
        raise UserInputError(f'model {model_path} not found')
    run_config = load_run_config(model_path)  # Checked before the long load.
    input_config = run_config.config.input if run_config else InputConfig()
    if not files.is_remote(model_path) and os.path.isfile(model_path) and not zipfile.is_zipfile(
            model_path):
        # Keras says "File not found" of a .keras file cut short.
        raise UserInputError(f'{model_path} is not a readable Keras model: not a whole zip '
                             'archive (truncated or damaged)')
    try:
        model = keras.saving.load_model(model_path, safe_mode=True)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as error:
        # A truncated or damaged file: Keras names no file in its errors.
        raise UserInputError(f'{model_path} is not a readable Keras model '
                             f'({describe(error)})') from None
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


# ----------------------------------------------------------------------------
# Evaluation, and the Kaggle submission.


def evaluate(model: keras.Model, config: InputConfig, split: str,
             model_name: str) -> run_folder.Metrics:
    """The metrics of `model` (uint8 images in: `load_serving_model`) on a labelled
    split, recording `model_name` (`run_folder.model_name`) as their model."""
    dataset, count = pipeline.make_dataset(config, split, training=False)
    labels = np.concatenate([np.argmax(targets, axis=1) for _, targets in dataset])
    # steps: the dataset's length, so Keras shows progress out of a total and
    # does not take its end for a shortage of data.
    probabilities = model.predict(dataset.map(lambda images, _: images), verbose='auto',
                                  steps=pipeline.evaluation_steps(count, config.batch_size))
    predicted = np.argmax(probabilities, axis=1)
    confusion = np.zeros((records.NUM_CLASSES, records.NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    chosen = probabilities[np.arange(len(labels)), labels]
    return run_folder.Metrics(
        model=model_name, split=split, examples=int(len(labels)),
        accuracy=float(np.mean(predicted == labels)),
        loss=float(-np.mean(np.log(np.clip(chosen, 1e-7, 1.0)))),
        class_names=records.CLASS_NAMES,
        per_class_accuracy=dict(zip(records.CLASS_NAMES, per_class.tolist())),
        confusion_matrix=tuple(tuple(row) for row in confusion.tolist()))


def write_predictions(path: str, serving: keras.Model, records_dir: str, split: str,
                      model_name: str, count: int = SAMPLE_COUNT) -> None:
    """The first images of a split with a model's predictions, as an .npz file of
    images, labels, probabilities, class_names, and the model and split (str)."""
    _, images, labels = zip(*itertools.islice(records.read_split(records_dir, split), count))
    images = np.stack(images)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=np.array(labels),
                        probabilities=serving.predict(images, verbose=0).astype(np.float32),
                        class_names=np.array(records.CLASS_NAMES),
                        model=np.array(model_name), split=np.array(split))
    files.write_atomically(path, buffer.getvalue())


def evaluate_model(model_dir: str, model: str, records_dir: str, split: str = 'auto',
                   batch_size: int = 256, metrics_output: str | None = None,
                   predictions_output: str | None = None
                   ) -> tuple[run_folder.Metrics, list[str]]:
    """Evaluates `model` of a run ('final', 'best' or a .keras path) on a split
    ('auto' as in `resolve_split`) and writes its metrics and predictions, by
    default to `run_folder.evaluation_metrics` and `evaluation_predictions`,
    never to the trainer's. Returns the metrics and the paths written; nothing
    is written on bad input."""
    model_path = resolve_model(model_dir, model)
    split = resolve_split(records_dir, split)
    check_records(model_path, records_dir, split)
    outputs = _outputs(model_dir, model_path, split, metrics_output, predictions_output)
    serving = load_serving_model(model_path)
    config = InputConfig(records_dir=records_dir, batch_size=batch_size, upsample_on='device')
    metrics = evaluate(serving, config, split, run_folder.model_name(model))
    files.write_dataclass(outputs[0], metrics)
    write_predictions(outputs[1], serving, records_dir, split, metrics.model)
    return metrics, outputs


def _outputs(model_dir: str, model_path: str, split: str, metrics_output: str | None,
             predictions_output: str | None) -> list[str]:
    """Where `evaluate_model` writes: where given, or by default; never over the
    trainer's metrics.json and predictions.npz, kept as the trainer wrote them."""
    def canonical(path):
        return posixpath.normpath(path) if files.is_remote(path) else os.path.realpath(path)
    defaults = [run_folder.evaluation_metrics(model_dir, model_path, split),
                run_folder.evaluation_predictions(model_dir, model_path, split)]
    trainer_files = {canonical(os.path.join(folder, name)): name
                     for folder in (model_dir, os.path.dirname(model_path))
                     for name in (run_folder.METRICS, run_folder.PREDICTIONS)}
    outputs = [metrics_output or defaults[0], predictions_output or defaults[1]]
    for output, default in zip(outputs, defaults):
        name = trainer_files.get(canonical(output))
        if name:
            raise UserInputError(
                f'{output} is the trainer\'s {name} of {run_folder.FINAL_MODEL}, never '
                f'overwritten: write elsewhere, by default {default}')
    return outputs


def _write_csv(path: str, header, rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)
    files.write_atomically(path, buffer.getvalue())


def predict_submission(model_dir: str, model: str, records_dir: str, output: str | None = None,
                       batch_size: int = 256) -> tuple[str, int]:
    """Writes Kaggle's submission CSV of `model` of a run ('final', 'best' or a
    .keras path) on the test records to `output` (default `run_folder.submission`):
    `id,label` with class names, sorted by id. Returns the path and its rows."""
    model_path = resolve_model(model_dir, model)
    check_records(model_path, records_dir, 'test')
    output = output or run_folder.submission(model_dir, model_path)
    serving = load_serving_model(model_path)
    predictions = {}
    # Kaggle's own test set has 300,000 images: say how far it got.
    tracker = Progress('test', unit='images predicted')
    total = records.load_manifest(records_dir).splits['test'].num_examples
    for images, ids in pipeline.make_prediction_dataset(records_dir, 'test', batch_size):
        classes = np.argmax(serving.predict_on_batch(images), axis=1)
        predictions.update((image_id.decode(), records.CLASS_NAMES[index])
                           for image_id, index in zip(ids.numpy(), classes))
        tracker.update(len(classes), total)
    tracker.done()
    ids = sorted(predictions, key=sources.id_sort_key)
    _write_csv(output, ('id', 'label'), [(image_id, predictions[image_id]) for image_id in ids])
    return output, len(ids)


# ----------------------------------------------------------------------------
# Your own images.

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
    """A PNG or JPEG file as the models and the SavedModel take it: uint8 RGB, 32x32x3.

    Any size and mode: EXIF orientation applied; 16-bit values scaled to 8
    bits; transparency over white; palette, grayscale and CMYK to RGB. The
    whole image, stretched to a square, is resized with Lanczos, which PIL
    widens by the reduction factor so every pixel of a large photo counts,
    and which keeps edges sharper than a box or bilinear filter.

    Raises:
        UnreadableImageError: a missing file, or not a whole PNG or JPEG image.
    """
    problem = ('no such file' if not files.exists(path) else 'is a folder' if files.isdir(path)
               else 'an empty file' if files.size(path) == 0 else None)
    if problem:
        raise UnreadableImageError(path, problem)
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
            image = Image.open(file, formats=('PNG', 'JPEG'))
    except Image.DecompressionBombError as error:
        # Past twice its limit Pillow refuses first; its message has the pixels.
        pixels = re.search(r'\((\d+) pixels\)', str(error))
        size = f'{int(pixels[1]):,} pixels' if pixels else 'more pixels'
    else:
        width, height = image.size
        if width * height <= MAX_IMAGE_PIXELS:
            return image
        image.close()
        size = f'{width:,} x {height:,} pixels'
    raise UnreadableImageError(path, f'declares {size}, over the {MAX_IMAGE_PIXELS:,} read '
                                     'here: refused before decoding (a decompression bomb?)')


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith('I'):
        # 16-bit grayscale: PIL's own conversion would clip at 255, not scale.
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    if image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in image.info:
        background = Image.new('RGBA', image.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(background, image.convert('RGBA'))
    return image.convert('RGB')


def list_images(patterns: list[str]) -> list[str]:
    """The image files that --images names: files (kept when missing, to be
    reported with the others), folders (their PNG and JPEG files) or globs;
    each once, in the order given, those of a folder or glob sorted.

    Raises:
        UserInputError: a glob that matches no file, or a folder without images.
    """
    paths = []
    for pattern in patterns:
        if any(character in pattern for character in '*?['):
            matches = [match for match in files.glob(pattern) if not files.isdir(match)]
            if not matches:
                raise UserInputError(f'--images={pattern}: no file matches')
        elif files.isdir(pattern):
            matches = [os.path.join(pattern, name) for name in files.listdir(pattern)
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


def describe_unreadable(errors: dict[str, str]) -> str:
    """The first few unreadable files with their reasons, in one line."""
    named = [f'{path}: {reason}' for path, reason in list(errors.items())[:UNREADABLE_NAMED]]
    more = len(errors) - len(named)
    return '; '.join(named) + (f'; and {more} more' if more else '')


def unreadable_summary(predictions: list[ImagePrediction], output: str) -> str | None:
    """The error line of the files that could not be read; None when none."""
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
    rows = []
    for prediction in predictions:
        cells = [cell for name, probability in prediction.top
                 for cell in (name, f'{probability:.6f}')]
        padding = [''] * (2 * TOP_CLASSES - len(cells))
        rows.append([prediction.file, *cells, *padding, prediction.error or ''])
    _write_csv(path, IMAGES_COLUMNS, rows)


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
    """Classifies image files (`list_images`) with a model of a run and writes the
    CSV, by default `run_folder.images_predictions`. Returns its path and each
    file's prediction or error. When no file can be read, or `list_images` or
    `resolve_model` refuse, raises UserInputError naming why, and writes nothing."""
    model_path = resolve_model(model_dir, model)
    paths = list_images(images)
    output = output or run_folder.images_predictions(model_dir, model_path)
    loaded, errors = {}, {}
    for path in paths:  # Before the model: bad files fail fast.
        try:
            loaded[path] = load_image_for_model(path)
        except UnreadableImageError as error:
            errors[path] = error.reason
    if not loaded:
        raise UserInputError(describe_unreadable(errors) if len(errors) == 1 else
                             f'none of the {len(errors)} images could be read: '
                             f'{describe_unreadable(errors)}')
    serving = load_serving_model(model_path)
    probabilities = dict(zip(loaded, serving.predict(np.stack(list(loaded.values())),
                                                     batch_size=batch_size, verbose=0)))
    predictions = [ImagePrediction(path, error=errors[path]) if path in errors
                   else ImagePrediction(path, top=_top_classes(probabilities[path]))
                   for path in paths]
    write_image_predictions(output, predictions)
    return output, predictions
