r"""Draws the figures of a training run from its run folder.

    python scripts/plot.py --model_dir=runs/x                       # into runs/x
    python scripts/plot.py --model_dir=runs/x --output_dir=figures
    python scripts/plot.py --model_dir=runs/x --model=best          # after evaluate.py
    python scripts/plot.py --compare=runs/a,runs/b                  # into runs/a
    python scripts/plot.py --model_dir=runs/b --compare=runs/a,runs/b

Writes loss.png, accuracy.png and learning_rate.png from history.csv: the
run's curves. The other figures are one model's on one split, and their
titles say which ("final.keras on validation, 5,000 images"). By default
(--model=final, the trainer's split) they are confusion_matrix.png and
per_class_accuracy.png from metrics.json and samples.png from
predictions.npz, which appear when training ends, so a run in progress gets
its curves only. For another model or split (--model=best|PATH, --split)
they come from the metrics-<model>-<split>.json and
predictions-<model>-<split>.npz that scripts/evaluate.py writes, and their
names end in -<model>-<split>.png; when those files are missing, the error
names the evaluate.py command that writes them. --compare adds
compare_loss.png and compare_accuracy.png. Prints each path written. Bad
input writes nothing. TensorFlow is imported only for remote folders (gs://).
"""

from cifar_tfrecord import cli
from cifar_tfrecord import plots
from cifar_tfrecord.config import PlotConfig

cli.define_flags(PlotConfig)


def main(argv):
    cli.no_arguments(argv)
    config = cli.config_from_flags(PlotConfig)
    for path in plots.write_plots(config.model_dir, list(config.compare), config.output_dir,
                                  config.model, config.split):
        print(path)


if __name__ == '__main__':
    cli.run(main)
