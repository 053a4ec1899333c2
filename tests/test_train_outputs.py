"""One short training run through scripts/train.py, and every output it
writes, read back by the tests, evaluate.py and predict.py.
"""

import json
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar_tfrecord import evaluate
from cifar_tfrecord import model as model_lib
from cifar_tfrecord import records
from conftest import SMALL_TRAINING, read_history, run_script
from test_model import predict_eagerly, predict_with_keras_alone

# A whole training run, and every script on its outputs: the full suite only.
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def trained_run(sample_records, tmp_path_factory):
    """One short run: two replicas, mixed bfloat16, both phases, from a weights file.

    Every test of this module reads it, and the test command sends whole
    modules to its processes (--dist=loadfile): it is trained once.
    """
    folder = tmp_path_factory.mktemp('run')
    weights = str(folder / 'backbone.weights.h5')
    model_lib.build_backbone('none', 32).save_weights(weights)
    model_dir = str(folder / 'run')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        status = run_script(
            'train', f'--records_dir={sample_records}', f'--model_dir={model_dir}',
            *SMALL_TRAINING, f'--weights={weights}', '--strategy=mirrored',
            '--mixed_precision=mixed_bfloat16', '--freeze_epochs=1', '--fine_tune_epochs=1',
            '--steps_per_epoch=2', '--batch_norm_momentum=0.8')
    with open(os.path.join(folder, 'warnings.txt'), 'w') as file:
        file.write('\n'.join(str(warning.message) for warning in caught))
    keras.mixed_precision.set_global_policy('float32')
    assert status == 0
    return model_dir


def test_a_run_writes_every_output(trained_run):
    for name in ('config.json', 'history.csv', 'logs', 'best.keras', 'final.keras',
                 'saved_model', 'metrics.json', 'predictions.npz'):
        assert os.path.exists(os.path.join(trained_run, name)), name
    assert not os.path.exists(os.path.join(trained_run, 'backup'))
    history = read_history(trained_run)
    assert [(row['epoch'], row['phase']) for row in history] == [('1', 'freeze'),
                                                                ('2', 'fine_tune')]
    for row in history:
        for column in ('loss', 'accuracy', 'val_loss', 'val_accuracy', 'learning_rate',
                       'images_per_second', 'epoch_seconds'):
            assert float(row[column]) >= 0, column


def test_training_raises_none_of_keras_warnings_about_its_input(trained_run):
    # Keras warns of a shuffle it ignores, and of input that runs out, when
    # fit and predict are not told the datasets' lengths.
    with open(os.path.join(os.path.dirname(trained_run), 'warnings.txt')) as file:
        raised = file.read()
    assert 'shuffle' not in raised and 'ran out of data' not in raised, raised


def test_two_replicas_and_bfloat16_were_used(trained_run):
    with open(os.path.join(trained_run, 'config.json')) as file:
        config = json.load(file)
    resolved = ('mixed_precision', 'strategy', 'replicas', 'jit_compile')
    assert {name: config[name] for name in resolved} == {
        'mixed_precision': 'mixed_bfloat16', 'strategy': 'MirroredStrategy', 'replicas': 2,
        'jit_compile': False}
    assert config['config']['input']['batch_size'] == 8
    assert config['versions']['tensorflow'] == tf.__version__


def test_metrics_cover_the_validation_split(trained_run, sample_records):
    with open(os.path.join(trained_run, 'metrics.json')) as file:
        metrics = json.load(file)
    assert metrics['split'] == 'validation'  # The sample's test set is unlabelled.
    assert metrics['model'] == 'final.keras'  # The run's model.
    assert metrics['examples'] == 20
    confusion = np.array(metrics['confusion_matrix'])
    assert confusion.shape == (10, 10) and confusion.sum() == 20
    assert metrics['accuracy'] == pytest.approx(np.trace(confusion) / 20)
    assert set(metrics['per_class_accuracy']) == set(records.CLASS_NAMES)
    predictions = np.load(os.path.join(trained_run, 'predictions.npz'))
    assert (str(predictions['model']), str(predictions['split'])) == ('final.keras', 'validation')
    assert predictions['images'].shape == (20, 32, 32, 3)
    assert predictions['probabilities'].shape == (20, 10)


def test_saved_model_takes_raw_images_and_matches_keras(trained_run, sample_records):
    images = np.stack([image for _, image, _ in records.read_split(sample_records, 'test')])
    keras_model = evaluate.load_serving_model(os.path.join(trained_run, 'final.keras'))
    exported = tf.saved_model.load(os.path.join(trained_run, 'saved_model'))
    expected = keras_model.predict(images, verbose=0)
    served = exported.serve(tf.constant(images)).numpy()
    np.testing.assert_allclose(served, expected, atol=2e-2)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-3)


def test_saved_model_stores_each_weight_once(trained_run):
    # Keras' Model.export stores each twice (keras-team/keras#23553).
    serving = evaluate.load_serving_model(os.path.join(trained_run, 'final.keras'))
    checkpoint = tf.train.load_checkpoint(os.path.join(trained_run, 'saved_model', 'variables',
                                                       'variables'))
    shapes = checkpoint.get_variable_to_shape_map()
    stored = sum(int(np.prod(shape)) for name, shape in shapes.items()
                 if name != '_CHECKPOINTABLE_OBJECT_GRAPH')
    # Every variable, the dropout's seed state included, and none twice.
    assert stored == sum(int(np.prod(variable.shape)) for variable in serving.variables)
    signature = tf.saved_model.load(os.path.join(trained_run, 'saved_model')).signatures[
        'serving_default']
    assert signature.structured_input_signature[1]['images'].dtype == tf.uint8


def test_final_model_loads_with_keras_alone(trained_run, sample_records, tmp_path):
    """final.keras in a Python that never imported this package: Keras' own layers only."""
    images = np.stack([image for _, image, _ in records.read_split(sample_records, 'test')])
    final_path = os.path.join(trained_run, 'final.keras')
    expected = predict_eagerly(evaluate.load_serving_model(final_path), images)
    [loaded] = predict_with_keras_alone(images, [final_path], tmp_path)
    # The same bfloat16 computation in another process (equal here): at
    # most the order of a sum may differ.
    np.testing.assert_allclose(loaded, expected, rtol=0, atol=1e-4)


def test_best_checkpoint_loads_in_safe_mode(trained_run):
    model = keras.saving.load_model(os.path.join(trained_run, 'best.keras'), safe_mode=True)
    assert model.inputs[0].dtype == 'uint8'
    backbone = model.get_layer('resnet50')
    norms = [layer for layer in [*backbone.layers, model.get_layer('head_norm')]
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.8 for layer in norms)  # --batch_norm_momentum


def test_evaluate_script_writes_metrics(trained_run, sample_records, tmp_path):
    output = tmp_path / 'metrics.json'
    assert run_script('evaluate', f'--model_dir={trained_run}', f'--records_dir={sample_records}',
                      '--split=train', f'--output={output}',
                      f'--predictions_output={tmp_path / "predictions.npz"}') == 0
    metrics = json.loads(output.read_text())
    assert metrics['split'] == 'train' and metrics['examples'] == 60
    assert metrics['model'] == 'final.keras'


def test_predict_script_writes_a_kaggle_submission(trained_run, sample_records):
    assert run_script('predict', f'--model_dir={trained_run}',
                      f'--records_dir={sample_records}') == 0
    with open(os.path.join(trained_run, 'submission-final.csv')) as file:
        lines = file.read().splitlines()
    assert lines[0] == 'id,label'
    rows = [line.split(',') for line in lines[1:]]
    assert [int(image_id) for image_id, _ in rows] == list(range(1, 13))
    assert all(label in records.CLASS_NAMES for _, label in rows)
