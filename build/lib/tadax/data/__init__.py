"""Video input pipeline: dataset preparation formats, sampling, augmentation, tf.data readers."""
