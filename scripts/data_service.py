r"""Starts a tf.data service: a dispatcher and workers that preprocess input.

One host, dispatcher and two workers:
    python scripts/data_service.py --port=5050 --num_workers=2
    python scripts/train.py --data_service=grpc://localhost:5050 ...

Several hosts: the dispatcher on one, workers on the others:
    python scripts/data_service.py --role=dispatcher --port=5050
    python scripts/data_service.py --role=worker --dispatcher=host0:5050

Workers need the records folder at the same path as the trainer (a shared
file system or gs://). Runs until interrupted.
"""

from absl import logging

from cifar_tfrecord import cli
from cifar_tfrecord.config import DataServiceConfig

cli.define_flags(DataServiceConfig)


def main(argv):
    cli.no_arguments(argv)
    config = cli.config_from_flags(DataServiceConfig)
    import tensorflow as tf  # Here: --help and bad flags answer without loading it.
    servers = []
    dispatcher_address = config.dispatcher
    if config.role in ('all', 'dispatcher'):
        dispatcher = tf.data.experimental.service.DispatchServer(
            tf.data.experimental.service.DispatcherConfig(port=config.port))
        servers.append(dispatcher)
        dispatcher_address = f'localhost:{config.port}'
        print(f'dispatcher: use --data_service=grpc://<this host>:{config.port}', flush=True)
    if config.role in ('all', 'worker'):
        for _ in range(config.num_workers):
            servers.append(tf.data.experimental.service.WorkerServer(
                tf.data.experimental.service.WorkerConfig(dispatcher_address=dispatcher_address)))
        logging.info('%d workers serving dispatcher %s', config.num_workers, dispatcher_address)
    servers[0].join()


if __name__ == '__main__':
    cli.run(main, interrupted='the service stopped')
