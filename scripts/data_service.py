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

import tensorflow as tf
from absl import flags
from absl import logging

from cifar_tfrecord import cli
from cifar_tfrecord.errors import UserInputError

flags.DEFINE_enum('role', 'all', ['all', 'dispatcher', 'worker'],
                  'all: a dispatcher and --num_workers workers in this process.')
flags.DEFINE_integer('port', 5050, 'Dispatcher port (role all or dispatcher).')
flags.DEFINE_integer('num_workers', 1, 'Workers to start (role all or worker).')
flags.DEFINE_string('dispatcher', None, 'host:port of the dispatcher (role worker).')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    servers = []
    dispatcher_address = FLAGS.dispatcher
    if FLAGS.role in ('all', 'dispatcher'):
        dispatcher = tf.data.experimental.service.DispatchServer(
            tf.data.experimental.service.DispatcherConfig(port=FLAGS.port))
        servers.append(dispatcher)
        dispatcher_address = f'localhost:{FLAGS.port}'
        print(f'dispatcher: use --data_service=grpc://<this host>:{FLAGS.port}', flush=True)
    if FLAGS.role in ('all', 'worker'):
        if not dispatcher_address:
            raise UserInputError('--role=worker needs --dispatcher=host:port')
        for _ in range(FLAGS.num_workers):
            servers.append(tf.data.experimental.service.WorkerServer(
                tf.data.experimental.service.WorkerConfig(dispatcher_address=dispatcher_address)))
        logging.info('%d workers serving dispatcher %s', FLAGS.num_workers, dispatcher_address)
    servers[0].join()


if __name__ == '__main__':
    cli.run(main)
