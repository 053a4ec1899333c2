r"""Writes a Kaggle submission CSV from the test records.

    python scripts/predict.py --model_dir=runs/resnet50 --records_dir=records \
        --output=submission.csv

One row per test image, `id,label` with class names, sorted by integer id.
"""

from absl import flags

from cifar_tfrecord import cli
from cifar_tfrecord import evaluate

flags.DEFINE_string('model_dir', 'runs/resnet50', 'The run folder.')
flags.DEFINE_string('model', None, 'A .keras model; default: the run\'s best, else final.')
flags.DEFINE_string('records_dir', 'records', 'The records folder, with a test split.')
flags.DEFINE_string('output', 'submission.csv', 'The submission file to write.')
flags.DEFINE_integer('batch_size', 256, 'Images per prediction batch.')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    serving = evaluate.load_serving_model(
        FLAGS.model or evaluate.default_model_path(FLAGS.model_dir))
    rows = evaluate.write_submission(serving, FLAGS.records_dir, FLAGS.output, FLAGS.batch_size)
    print(f'wrote {FLAGS.output}: {rows} predictions')


if __name__ == '__main__':
    cli.run(main)
