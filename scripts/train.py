r"""Trains ResNet50 (ImageNet weights) on the CIFAR-10 records.

The GPU recipe (the defaults):
    python scripts/train.py --records_dir=records --model_dir=runs/resnet50 \
        --batch_size=256

A quick CPU check from scratch at 32 px:
    python scripts/train.py --weights=none --image_size=32 --freeze_epochs=0 \
        --fine_tune_epochs=3 --model_dir=runs/cpu_check

Writes config.json, history.csv, logs/, best.keras, final.keras,
saved_model/, metrics.json and predictions.npz into --model_dir. Rerun the
same command after a crash or kill to resume.

With TF_CONFIG set it is one worker of a multi-worker job (only the chief
writes --model_dir); scripts/launch_local.py starts such a job on one machine.
"""

from cifar_tfrecord import cli
from cifar_tfrecord.config import TrainConfig

cli.define_flags(TrainConfig)


def main(argv):
    cli.no_arguments(argv)
    config = cli.config_from_flags(TrainConfig)
    from cifar_tfrecord import train  # Loads TensorFlow: after cli.run has quietened it.
    metrics = train.train(config, cli.command_line())
    if metrics is None:
        print('worker done: the chief wrote the outputs')
        return
    print(f'{metrics.split} accuracy {metrics.accuracy:.4f}, loss {metrics.loss:.4f}')


if __name__ == '__main__':
    # What Ctrl-C keeps is said by train.train, which knows the epochs done.
    cli.run(main)
