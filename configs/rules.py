"""Per-parameter optimizer rules of the two model families, as `(regex, value)` lists.

They mirror how the original's `construct_optimizer` groups parameters (see
`tadax/train/optim.py` for the rule semantics):

* TAdaFormer takes its layer-wise branch (`LAYER_WISE_LR_DECAY < 1`):
  `decay ** (L + 1 - i)` by layer (embeddings, conv1, ln_pre: 0; block k: k+1;
  ln_post and head: L+1), x10 for names containing 'tada' (`NEW_PARAMS`) and
  for the head (`HEAD_LRMULT`); no decay for rank-1 parameters and biases.
* TAdaConvNeXtV2 takes the legacy branch (`FINE_TUNE` and `LR_REDUCE`; it
  ignores `NEW_PARAMS` / `HEAD_LRMULT`): 'rf' x5 (names with 'bias' x10,
  undecayed), head x5 (bias x10, undecayed), 'norm' and biases undecayed.
  The original's stem / downsampling LayerNorms are `downsample_layers.i.j`
  there, so its 'norm' test misses them and their scales are decayed; here
  they are `stem_norm` / `downsample_i_norm`, hence the first wd rule.

`tests/test_optim.py` checks both against the original's grouping applied to
its own parameter names, on the real B/16 and ConvNeXt-T trees.
"""

import ml_collections


def tadaformer_rules(opt: ml_collections.ConfigDict, depth: int, layer_decay: float) -> None:
    """Writes the TAdaFormer (layer-wise) parameter rules into `opt`."""
    opt.lr_mults = [(r"head", 10.0), (r"tada", 10.0)]
    opt.wd_mults = [(r"/bias$", 0.0)]
    opt.no_decay_1d = True
    opt.layer_decay = ml_collections.ConfigDict(dict(
        rate=layer_decay, num_layers=depth,
        layer_ids=[(r"embd|cls_token|embedding", 0), (r"^backbone/(?:conv1|ln_pre)/", 0),
                   (r"^backbone/layers_(\d+)/", 1), (r".*", -1)]))


def convnext_rules(opt: ml_collections.ConfigDict) -> None:
    """Writes the TAdaConvNeXtV2 (legacy branch) parameter rules into `opt`."""
    opt.lr_mults = [(r"rf.*bias", 10.0), (r"rf", 5.0), (r"head.*bias", 10.0), (r"head", 5.0)]
    opt.wd_mults = [(r"^backbone/(?:stem|downsample_\d+)_norm/scale$", 1.0),
                    (r"rf.*bias", 0.0), (r"rf", 1.0), (r"norm|bias", 0.0)]
    opt.no_decay_1d = False
    opt.layer_decay = ml_collections.ConfigDict(dict(rate=1.0, num_layers=0, layer_ids=[]))
