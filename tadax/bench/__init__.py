"""One benchmark command for tadax: `python -m tadax.bench` (see `tadax/bench/__main__.py`).

Modules: `recipes` (run configs and `--set` overrides), `runs` (the tadax
train step and eval forward, compiled), `op` (the TAdaConv op alone),
`memory` (peak train memory and the batch that fits), `accelerator` (peak
rates and MFU), `original` and `against` (side by side with the original
PyTorch code), `input_pipeline` and `preparation` (the data modes: the input
pipelines' clips/s, dataset preparation's videos/s), `table` (the markdown
output).
"""
