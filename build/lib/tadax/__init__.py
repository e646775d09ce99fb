"""tadax: TAdaConv V2 video models (TAdaFormer, TAdaConvNeXtV2) in JAX/Flax."""
