"""CIFAR-10 transfer learning with ResNet50, fed by TFRecords and tf.data.

The modules follow the data: sources -> convert (records) -> pipeline ->
model -> train -> plots -> benchmark.
"""
