r"""Writes a Kaggle submission CSV from the test records.

    python scripts/predict.py --model_dir=runs/resnet50 --records_dir=records [--model=best]

--model is final (the run's model, the default), best, or a path to a .keras
file. Writes --output, by default <model_dir>/submission-<model>.csv: one
row per test image, `id,label` with class names, sorted by integer id.
Records with other class names than the run trained on are refused.
"""

from absl import flags

from cifar_tfrecord import cli
from cifar_tfrecord import evaluate
from cifar_tfrecord import run_folder

flags.DEFINE_string('model_dir', 'runs/resnet50', 'The run folder.')
flags.DEFINE_string('model', run_folder.MODEL_OF_RECORD, run_folder.MODEL_FLAG_HELP)
flags.DEFINE_string('records_dir', 'records', 'The records folder, with a test split.')
flags.DEFINE_string('output', None,
                    'The submission file to write; default <model_dir>/submission-<model>.csv.')
flags.DEFINE_integer('batch_size', 256, 'Images per prediction batch.')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    path, rows = evaluate.predict_submission(
        FLAGS.model_dir, FLAGS.model, FLAGS.records_dir, FLAGS.output, FLAGS.batch_size)
    print(f'wrote {path}: {rows} predictions of {run_folder.model_name(FLAGS.model)}')


if __name__ == '__main__':
    cli.run(main)
