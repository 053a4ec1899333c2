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

from cifar_tfrecord import cli
from cifar_tfrecord.config import EvaluateConfig

cli.define_flags(EvaluateConfig)


def main(argv):
    cli.no_arguments(argv)
    config = cli.config_from_flags(EvaluateConfig)
    from cifar_tfrecord import evaluate  # Loads TensorFlow: after cli.run has quietened it.
    metrics, paths = evaluate.evaluate_model(
        config.model_dir, config.model, config.records_dir, config.split, config.batch_size,
        config.output, config.predictions_output)
    print(f'{metrics.model} on {metrics.split}: accuracy {metrics.accuracy:.4f}, '
          f'loss {metrics.loss:.4f}; wrote {" and ".join(paths)}')


if __name__ == '__main__':
    cli.run(main)
