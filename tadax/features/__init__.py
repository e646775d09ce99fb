"""Video embeddings: the backbone features of every video of a prepared split or of a
folder of video files, written to resumable `.npz` shards; or, with `--window`/`--stride`/
`--fps`, the features of every window of each video of a folder, one `.npy` per video
with a JSON index (`tadax/features/windows.py`). The command is `tadax/features/__main__.py`,
the library `tadax/features/extract.py`; this file imports nothing, so that
`python -m tadax.features` imports TensorFlow quietly (tadax.startup) before the library
imports it.

  python -m tadax.features --config configs/tadaformer_b16.py \
      --checkpoint ckpt/tadaformer_b16_k400 --config.data.data_dir=/data/k400 \
      --split val --output feats/k400_val
  python -m tadax.features --config configs/tadaformer_b16.py \
      --checkpoint ckpt/tadaformer_b16_k400 --videos /data/my_videos --output feats/mine

Without `--config` the config is the checkpoint's own, as for eval.py: a run's saved
config (model, data, views), or a converted model with its recipe's preprocessing.
Every video is seen through the evaluation views (`data.num_clips` x
`data.num_crops`, or the centre view with `--single_view`); the pooled
backbone features of its views (the classification head's input) are
averaged (`config.features.aggregate='mean'`) or kept apart in view order
(`'all'`); `config.features.pre_pool=True` also writes the features before
pooling, aggregated the same way. Output shard j holds the videos
`[j S, (j + 1) S)` (S = `features.videos_per_shard`) of the split (in shard
order) or of the folder (sorted paths); with P hosts, host p computes the
shards j with j mod P = p on its own devices (P and p from jax's processes,
or `--host_count/--host_index` for independent processes). A shard is written under a
temporary name and renamed when complete, so a re-run computes only the
shards that are missing. `features.json` records the settings; a re-run with
other settings into the same folder is refused.
"""
