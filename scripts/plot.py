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
input writes nothing. Takes about two seconds; TensorFlow is imported only
for remote folders (gs://).
"""

from absl import flags

from cifar_tfrecord import cli
from cifar_tfrecord import plots
from cifar_tfrecord import run_folder
from cifar_tfrecord.errors import UserInputError

flags.DEFINE_string('model_dir', None, 'The run folder to plot (local or gs://).')
flags.DEFINE_string('output_dir', None, (
    'Where to write the PNGs; by default the run figures go into --model_dir and the '
    'comparison into the first folder of --compare.'))
flags.DEFINE_list('compare', [], (
    'Comma-separated run folders whose training and validation curves to overlay in '
    'compare_loss.png and compare_accuracy.png.'))
flags.DEFINE_string('model', run_folder.MODEL_OF_RECORD, run_folder.MODEL_FLAG_HELP)
flags.DEFINE_string('split', None, (
    "The split the model's figures show; default: the trainer's (the split of metrics.json)."))
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise flags.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    if not FLAGS.model_dir and not FLAGS.compare:
        raise UserInputError('nothing to plot: give --model_dir=RUN_FOLDER or '
                             '--compare=RUN_FOLDER,RUN_FOLDER')
    for path in plots.write_plots(FLAGS.model_dir, FLAGS.compare, FLAGS.output_dir,
                                  FLAGS.model, FLAGS.split):
        print(path)


if __name__ == '__main__':
    cli.run(main)
