"""Offline preparation: datasets as users hold them -> the sharded records `tadax.data` reads.

`python -m tadax.prepare LAYOUT ...` (`cli`) reads the annotations
(`annotations`), checks what an earlier run left (`fingerprint`), and writes
each split (`splits`) shard by shard (`shards`), locally in worker processes
(`shard_writer`, which decode and encode each video (`encode`) and write its
record (`record_bytes`, `tfrecord_file`) without TensorFlow) or with an Apache
Beam runner (`beam`). `tfds_builders` offers the same as TFDS builders;
`synthetic` generates the quick start's dataset. The layout written is
`tadax.data.record_format`.
"""
