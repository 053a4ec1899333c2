r"""Writes a Kaggle submission CSV from the test records, or classifies your own images.

    python scripts/predict.py --model_dir=runs/resnet50 --records_dir=records [--model=best]
    python scripts/predict.py --model_dir=runs/resnet50 --images='photos/*.jpg,cat.png'

--model is final (the run's model, the default), best, or a path to a .keras
file.

Submission: writes --output, by default <model_dir>/submission-<model>.csv:
one row per test image, `id,label` with class names, sorted by integer id.
Records with other class names than the run trained on are refused.

--images: PNG or JPEG files, folders (their .png, .jpg and .jpeg files) or
globs, comma-separated; each image is read and resized to 32x32 by
`evaluate.load_image_for_model`. Prints a table of each file's top 3
classes and writes --output, by default
<model_dir>/image-predictions-<model>.csv, with the columns file, class_1,
probability_1, class_2, probability_2, class_3, probability_3, error. A file
that cannot be read gets its reason in its row, the others are classified,
and the exit status is then 1. A glob that matches nothing writes nothing.
Measured here: 20 images (ten 12-megapixel JPEG photos, ten PNG icons) with
a 32 px model in 8 s, most of it starting TensorFlow and loading the model.
"""

from absl import flags

from cifar_tfrecord import cli
from cifar_tfrecord import evaluate
from cifar_tfrecord import run_folder
from cifar_tfrecord.errors import UserInputError

flags.DEFINE_string('model_dir', 'runs/resnet50', 'The run folder.')
flags.DEFINE_string('model', run_folder.MODEL_OF_RECORD, run_folder.MODEL_FLAG_HELP)
flags.DEFINE_string('records_dir', 'records', 'The records folder, with a test split.')
flags.DEFINE_list('images', None, (
    'Classify these images instead of the test records: PNG or JPEG files, folders or globs, '
    'comma-separated.'))
flags.DEFINE_string('output', None, (
    'The CSV to write; default <model_dir>/submission-<model>.csv, or with --images '
    '<model_dir>/image-predictions-<model>.csv.'))
flags.DEFINE_integer('batch_size', 256, 'Images per prediction batch.')
FLAGS = flags.FLAGS


def main(argv):
    cli.no_arguments(argv)
    if FLAGS.images:
        classify(FLAGS.images)
        return
    path, rows = evaluate.predict_submission(
        FLAGS.model_dir, FLAGS.model, FLAGS.records_dir, FLAGS.output, FLAGS.batch_size)
    print(f'wrote {path}: {rows} predictions of {run_folder.model_name(FLAGS.model)}')


def classify(images: list[str]) -> None:
    path, predictions = evaluate.predict_images(
        FLAGS.model_dir, FLAGS.model, images, FLAGS.output, FLAGS.batch_size)
    print(evaluate.format_image_table(predictions))
    print(f'wrote {path}: {len(predictions)} images, by {run_folder.model_name(FLAGS.model)}')
    failed = sum(prediction.error is not None for prediction in predictions)
    if failed:
        raise UserInputError(f'{failed} of {len(predictions)} images could not be read; '
                             f'their rows in {path} say why')


if __name__ == '__main__':
    cli.run(main)
