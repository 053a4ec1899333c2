r"""Evaluates a model of a run on a labelled split.

    python scripts/evaluate.py --model_dir=runs/resnet50 --records_dir=records \
        --split=validation [--model=best]

--model is final (the run's model, the default), best, or a path to a .keras
file. Writes <model_dir>/metrics-<model>-<split>.json (model, split,
accuracy, loss, per-class accuracy, confusion matrix) and
predictions-<model>-<split>.npz (the split's first 256 images with the
model's predictions, for scripts/plot.py --model=...). Never overwrites the
trainer's metrics.json or predictions.npz. Records with other class names
than the run trained on are refused; other records of the same classes are
evaluated with a warning.
"""

from absl import flags

from cifar_tfrecord import cli
from cifar_tfrecord import evaluate
from cifar_tfrecord import run_folder

flags.DEFINE_string('model_dir', 'runs/resnet50', 'The run folder.')
flags.DEFINE_string('model', run_folder.MODEL_OF_RECORD, run_folder.MODEL_FLAG_HELP)
flags.DEFINE_string('records_dir', 'records', 'The records folder.')
flags.DEFINE_string('split', 'auto', 'A labelled split; auto: test if labelled, else validation.')
flags.DEFINE_integer('batch_size', 256, 'Images per prediction batch.')
flags.DEFINE_string('output', None,
                    'Where to write the metrics; default <model_dir>/metrics-<model>-<split>.json.')
flags.DEFINE_string('predictions_output', None, (
    'Where to write the predictions; default <model_dir>/predictions-<model>-<split>.npz.'))
FLAGS = flags.FLAGS


def main(argv):
    del argv
    metrics, paths = evaluate.evaluate_model(
        FLAGS.model_dir, FLAGS.model, FLAGS.records_dir, FLAGS.split, FLAGS.batch_size,
        FLAGS.output, FLAGS.predictions_output)
    print(f'{metrics["model"]} on {metrics["split"]}: accuracy {metrics["accuracy"]:.4f}, '
          f'loss {metrics["loss"]:.4f}; wrote {" and ".join(paths)}')


if __name__ == '__main__':
    cli.run(main)
