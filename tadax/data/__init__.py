"""The online input pipeline: prepared shards -> batches (reading, sampling, augmentation, views).

Preparing the shards is `tadax.prepare` (offline). This package imports nothing from it
but one call: `pipeline.resolve_data_dir` generates the synthetic dataset on first use
(`tadax.prepare.synthetic.ensure_synthetic`).
"""
