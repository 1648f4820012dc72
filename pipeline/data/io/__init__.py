"""RLDS/TFDS I/O without TensorFlow: TFRecord framing, ``tf.train.Example`` coding, feature specs,
and reading and writing TFDS builder directories."""
