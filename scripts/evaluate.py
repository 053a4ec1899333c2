r"""Evaluates a saved model on a labelled split and writes metrics.json.

    python scripts/evaluate.py --model_dir=runs/resnet50 --records_dir=records \
        --split=validation

Uses --model (default: best.keras of --model_dir, else final.keras) and
writes --output (default: <model_dir>/metrics.json): accuracy, loss,
per-class accuracy and the confusion matrix.
"""

import os

from absl import flags

from cifar_tfrecord import cli
from cifar_tfrecord import evaluate
from cifar_tfrecord.config import InputConfig

flags.DEFINE_string('model_dir', 'runs/resnet50', 'The run folder.')
flags.DEFINE_string('model', None, 'A .keras model; default: the run\'s best, else final.')
flags.DEFINE_string('records_dir', 'records', 'The records folder.')
flags.DEFINE_string('split', 'auto', 'A labelled split; auto: test if labelled, else validation.')
flags.DEFINE_integer('batch_size', 256, 'Images per prediction batch.')
flags.DEFINE_string('output', None, 'Where to write the metrics; default <model_dir>/metrics.json.')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    model_path = FLAGS.model or evaluate.default_model_path(FLAGS.model_dir)
    split = evaluate.resolve_split(FLAGS.records_dir, FLAGS.split)
    serving = evaluate.load_serving_model(model_path)
    config = InputConfig(records_dir=FLAGS.records_dir, batch_size=FLAGS.batch_size,
                         upsample_on='device')
    metrics = evaluate.evaluate(serving, config, split)
    output = FLAGS.output or os.path.join(FLAGS.model_dir, 'metrics.json')
    evaluate.write_json(output, metrics)
    print(f'{model_path} on {split}: accuracy {metrics["accuracy"]:.4f}, '
          f'loss {metrics["loss"]:.4f}; wrote {output}')


if __name__ == '__main__':
    cli.run(main)
