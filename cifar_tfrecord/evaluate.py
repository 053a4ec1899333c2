"""Evaluation, predictions for plots, and the Kaggle submission file."""

import csv
import io
import json
import os

import keras
import numpy as np
import tensorflow as tf

from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord import sources
from cifar_tfrecord.callbacks import write_text_atomically
from cifar_tfrecord.config import InputConfig
from cifar_tfrecord.errors import UserInputError

SAMPLE_COUNT = 256


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


def evaluate(model: keras.Model, config: InputConfig, split: str) -> dict:
    """Accuracy, loss, per-class accuracy and confusion matrix on a split."""
    dataset, _ = pipeline.make_dataset(config, split, training=False)
    labels = np.concatenate([np.argmax(targets, axis=1) for _, targets in dataset])
    probabilities = model.predict(dataset.map(lambda images, _: images), verbose=0)
    return compute_metrics(probabilities, labels, split)


def compute_metrics(probabilities: np.ndarray, labels: np.ndarray, split: str) -> dict:
    predicted = np.argmax(probabilities, axis=1)
    confusion = np.zeros((records.NUM_CLASSES, records.NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    chosen = probabilities[np.arange(len(labels)), labels]
    return {
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
    write_text_atomically(path, json.dumps(metrics, indent=2) + '\n')


def write_predictions(model_dir: str, serving: keras.Model, records_dir: str, split: str,
                      count: int = SAMPLE_COUNT) -> str:
    """predictions.npz: the first images of a split with their predictions."""
    examples = [example for example, _ in zip(records.read_split(records_dir, split), range(count))]
    images = np.stack([image for _, image, _ in examples])
    probabilities = serving.predict(images, verbose=0)
    path = os.path.join(model_dir, 'predictions.npz')
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=np.array([label for *_, label in examples]),
                        probabilities=probabilities.astype(np.float32),
                        class_names=np.array(records.CLASS_NAMES))
    with tf.io.gfile.GFile(path, 'wb') as file:
        file.write(buffer.getvalue())
    return path


def write_submission(serving: keras.Model, records_dir: str, output: str,
                     batch_size: int = 256) -> int:
    """Kaggle's submission CSV: `id,label` with class names, sorted by id.

    Returns:
        The number of rows written.
    """
    predictions = {}
    for images, ids in pipeline.make_prediction_dataset(records_dir, 'test', batch_size):
        classes = np.argmax(serving.predict_on_batch(images), axis=1)
        for image_id, class_index in zip(ids.numpy(), classes):
            predictions[image_id.decode()] = records.CLASS_NAMES[class_index]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['id', 'label'])
    for image_id in sorted(predictions, key=sources.id_sort_key):
        writer.writerow([image_id, predictions[image_id]])
    write_text_atomically(output, buffer.getvalue())
    return len(predictions)


def load_serving_model(model_path: str) -> keras.Model:
    """A saved .keras model, wrapped to take uint8 32x32 images.

    Models trained with host-side preprocessing get the same preprocessing
    back from the run's config.json beside them.
    """
    from cifar_tfrecord import model as model_lib  # Registers Preprocessing.
    if not tf.io.gfile.exists(model_path):
        raise UserInputError(f'model {model_path} not found')
    model = keras.saving.load_model(model_path, safe_mode=True)
    input_config = _run_input_config(os.path.dirname(model_path))
    return model_lib.with_preprocessing(
        model, input_config.normalization, input_config.upsample_method)


def _run_input_config(model_dir: str) -> InputConfig:
    path = os.path.join(model_dir, 'config.json')
    if not tf.io.gfile.exists(path):
        return InputConfig()
    with tf.io.gfile.GFile(path, 'r') as file:
        saved = json.loads(file.read())['config']['input']
    return InputConfig(**saved)


def default_model_path(model_dir: str) -> str:
    """best.keras when the run has one, else final.keras."""
    best = os.path.join(model_dir, 'best.keras')
    return best if tf.io.gfile.exists(best) else os.path.join(model_dir, 'final.keras')
