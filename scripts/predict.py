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
and the exit status is then 1. When no file can be read (not an image,
empty, truncated, missing, or declaring over 100 million pixels), or a glob
matches nothing, or a folder holds no image, one line says why and nothing
is written.
"""

from cifar_tfrecord import cli
from cifar_tfrecord import run_folder
from cifar_tfrecord.config import PredictConfig
from cifar_tfrecord.errors import UserInputError

cli.define_flags(PredictConfig)


def main(argv):
    cli.no_arguments(argv)
    config = cli.config_from_flags(PredictConfig)
    from cifar_tfrecord import evaluate  # Loads TensorFlow: after cli.run has quietened it.
    if config.images:
        classify(config)
        return
    path, rows = evaluate.predict_submission(
        config.model_dir, config.model, config.records_dir, config.output, config.batch_size)
    print(f'wrote {path}: {rows} predictions of {run_folder.model_name(config.model)}')


def classify(config: PredictConfig) -> None:
    from cifar_tfrecord import evaluate
    path, predictions = evaluate.predict_images(
        config.model_dir, config.model, list(config.images), config.output, config.batch_size)
    print(evaluate.format_image_table(predictions))
    print(f'wrote {path}: {len(predictions)} images, by {run_folder.model_name(config.model)}')
    unreadable = evaluate.unreadable_summary(predictions, path)
    if unreadable:
        raise UserInputError(unreadable)


if __name__ == '__main__':
    cli.run(main)
