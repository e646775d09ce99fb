"""Flax TAdaConv V2 models: TAdaFormer and TAdaConvNeXtV2.

Parameter paths mirror the original PyTorch state-dict names ('.' -> '/',
list indices joined with '_'), e.g. `backbone/layers_3/tada/tadaconv/rf_func/a/kernel`
or `backbone/stages_2_5/dwconv_rf/b/kernel`, so that name-based recipes
(lr multipliers for 'tada' / 'rf' / the head) read the same as upstream.
With `scan_layers` the blocks are stacked instead (`backbone/layers/...`,
`backbone/stages_2/...`, a leading axis over the blocks); `layout` converts.
"""

from tadax.models.classifier import VideoClassifier
from tadax.models.registry import (ARCHITECTURES, build_model, complete_model_config,
                                   default_model_config, from_upstream)

__all__ = ["ARCHITECTURES", "VideoClassifier", "build_model", "complete_model_config",
           "default_model_config", "from_upstream"]
