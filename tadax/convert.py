"""Convert PyTorch checkpoints to tadax Orbax checkpoints, and back.

  # a released zoo file (architecture read off the weights)
  python -m tadax.convert zoo --input tadaformer_b16_k400.pyth --output ckpt/b16_k400
  # training starting points (video-specific branches freshly initialised)
  python -m tadax.convert clip --input ViT-B-16.pt --arch tadaformer_b16 --output ckpt/clip_b16
  python -m tadax.convert clip_hf --input model.safetensors --arch tadaformer_b16 --output ...
  python -m tadax.convert convnext --input convnext_tiny_1k_224_ema.pth \
      --arch tadaconvnextv2_tiny --output ckpt/convnext_t_in1k
  # a model trained with other settings: the original's YAML supplies what no weight shows
  python -m tadax.convert zoo --input mine.pyth --upstream-config mine.yaml --output ckpt/mine
  # ... with a report of what was read, assumed and attached, and the error per block
  # against the original code (a checkout of it, torch installed)
  python -m tadax.convert zoo --input b16.pyth --output ckpt/b16 --report b16.md \
      --against-original ../TAdaConv
  # back to the original code's format
  python -m tadax.convert export --input ckpt/b16_k400 --output b16_k400.pyth
  # serving artefacts of a converted model or a training run (symbolic batch size)
  python -m tadax.convert export --format jax_export --input ckpt/b16_k400 --output b16.jax_export
  python -m tadax.convert export --format saved_model --input workdirs/run --output b16_savedmodel

Files are read without executing code from them and without torch (the
OpenAI CLIP TorchScript archive is the one format that needs torch).
Conversion is strict: every source key must land on a parameter and every
parameter must be filled (for starting points: every parameter but the new
video-specific ones), with shapes checked; otherwise nothing is written.
Settings that no weight shows (attention heads, routing head width, ...)
come from `--upstream-config` / `--set`; each one that falls back to a
default is named on stderr.
"""

import argparse
import ast
import io
import sys
from typing import Collection, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from tadax import checkpoint_io, serving, torch_reader
from tadax.bench.original import check_checkout
from tadax.bench.recipes import BenchError
from tadax.models import build_model, default_model_config, layout
from tadax.models.registry import upstream_fields
from tadax.paths import user_path
from tadax.train import run_config
from tadax.train.checkpointing import load_weights
from tadax.weights import against_original, mapping, pretrained, report
from tadax.weights.infer import ArchitectureError, infer_model_config, unseen_settings
from tadax.weights.upstream import UpstreamConfigError, load_upstream_settings

EXPORT_FORMATS = ("state_dict", "jax_export", "saved_model")


class ConversionError(ValueError):
    """The input cannot be converted; the message names the file and the problem."""


def read_checkpoint_file(path: str) -> Mapping:
    """Any supported file -> its top-level object (dict), arrays as numpy.

    `.safetensors` files are read with safetensors; other files as torch.save
    archives by the restricted reader; a TorchScript archive (OpenAI CLIP)
    falls back to torch, which must then be installed.
    """
    if not user_path(path).is_file():
        raise ConversionError(f"{path}: no such file")
    if path.endswith(".safetensors"):
        return torch_reader.load_safetensors(path)
    try:
        return torch_reader.load_torch_file(path)
    except torch_reader.TorchScriptArchiveError:
        return torch_reader.load_torchscript_state_dict(path)


def select_state_dict(obj: Mapping, path: str, ema: bool = False) -> Dict[str, np.ndarray]:
    """The state dict inside a checkpoint object, `module.` prefixes removed.

    Accepts the zoo layout (`model_state`, or `model_ema_state` with `ema`),
    the ConvNeXt layout (`model`), a `state_dict` entry, or a bare state dict.
    """
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a dict at the top level, found {type(obj).__name__}")
    if ema:
        if "model_ema_state" not in obj:
            raise ConversionError(f"{path}: --ema asked for 'model_ema_state', which this file "
                                  f"lacks (top-level keys: {sorted(map(str, obj))[:10]})")
        sd = obj["model_ema_state"]
    else:
        for key in ("model_state", "model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                sd = obj[key]
                break
        else:
            sd = obj
    tensors = {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise ConversionError(f"{path}: found no tensors (top-level keys: {sorted(map(str, obj))[:10]})")
    others = sorted(k for k in sd if k not in tensors)
    if others:
        raise ConversionError(f"{path}: state dict entries that are not tensors: {others[:10]}")
    return mapping.strip_prefix(tensors)


def init_shapes(model_cfg: ml_collections.ConfigDict):
    """Variable shapes of the model (`jax.ShapeDtypeStruct`s; no memory spent), in its layout.

    Traced with the blocks scanned and the grouped depthwise convolution, which give
    the same shapes as any other implementation: one block per group is traced, not
    every block (a fraction of the time for the released models).
    """
    traced = model_cfg.copy_and_resolve_references()
    traced.scan_layers, traced.depthwise_impl = True, "lax"
    model = build_model(traced)
    video = jnp.zeros((1, model_cfg.num_frames, model_cfg.image_size, model_cfg.image_size, 3))
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, video))
    return layout.to_layout(shapes, model_cfg.scan_layers)


def init_variables(model_cfg: ml_collections.ConfigDict, seed: int,
                   skip: Collection[Tuple[str, ...]] = ()) -> Dict[Tuple[str, ...], np.ndarray]:
    """Freshly initialised variables (numpy), the original's initialisation, as
    `{path tuple: array}` without the paths in `skip`.

    The skipped variables are dropped inside the compiled program, so XLA never builds
    their random draws (most of the compile time); the others get the values a full
    initialisation gives them (Flax draws each parameter from its own path's key).
    """
    model = build_model(model_cfg)
    video = jnp.zeros((1, model_cfg.num_frames, model_cfg.image_size, model_cfg.image_size, 3))
    skip = set(skip)

    def kept(key):
        flat = mapping.flatten(model.init({"params": key}, video))
        return {"/".join(path): value for path, value in flat.items() if path not in skip}

    values = jax.jit(kept)(jax.random.PRNGKey(seed))
    return {tuple(name.split("/")): np.asarray(value) for name, value in values.items()}


def convert_zoo(state_dict: Mapping[str, np.ndarray], model_cfg: ml_collections.ConfigDict,
                source: str) -> Dict:
    """A full model state dict -> Flax variables, strictly."""
    return mapping.torch_to_flax(state_dict, init_shapes(model_cfg), source)


def map_pretrained(kind: str, state_dict: Mapping[str, np.ndarray],
                   model_cfg: ml_collections.ConfigDict, source: str, target: Mapping
                   ) -> Tuple[Dict, List[str], List[str]]:
    """Maps an image checkpoint onto the variable tree `target` (shapes suffice).

    Returns (loaded variables, source keys left out on purpose, paths of the
    video-specific parameters it does not cover). Every other parameter must
    come from the source, or a WeightMismatchError is raised.
    """
    if kind == "clip":
        sd, dropped = pretrained.from_openai_clip(state_dict, model_cfg.tubelet_size)
    elif kind == "clip_hf":
        sd, dropped = pretrained.from_hf_clip(state_dict, model_cfg.tubelet_size, source)
    elif kind == "convnext":
        sd, dropped = pretrained.from_convnext(state_dict, model_cfg.stem_t_kernel)
    else:
        raise ValueError(f"unknown starting point {kind!r}")
    expected_family = "tadaconvnextv2" if kind == "convnext" else "tadaformer"
    if model_cfg.family != expected_family:
        raise ConversionError(f"{source}: a {kind} checkpoint initialises {expected_family} "
                              f"models, not {model_cfg.arch}")
    loaded = mapping.torch_to_flax(sd, target, source, strict=False)
    flat_loaded = mapping.flatten(loaded)
    new_param = pretrained.NEW_PARAMETERS[model_cfg.family]
    fresh, missing = [], []
    for path in mapping.flatten(dict(target)):
        if path in flat_loaded:
            continue
        (fresh if new_param.search("/".join(path)) else missing).append("/".join(path))
    if missing:
        raise mapping.WeightMismatchError(source, missing=missing)
    return loaded, dropped, fresh


def convert_pretrained(kind: str, state_dict: Mapping[str, np.ndarray],
                       model_cfg: ml_collections.ConfigDict, source: str, seed: int
                       ) -> Tuple[Dict, List[str], List[str]]:
    """An image checkpoint -> variables of a fresh video model (new branches initialised).

    Returns (variables, dropped source keys, freshly initialised parameter paths).
    """
    loaded, dropped, fresh = map_pretrained(kind, state_dict, model_cfg, source,
                                            init_shapes(model_cfg))
    flat_loaded = mapping.flatten(loaded)
    merged = init_variables(model_cfg, seed, skip=flat_loaded)
    merged.update(flat_loaded)
    return mapping.unflatten(merged), dropped, fresh


def export_state_dict(variables: Mapping, output: str, overwrite: bool) -> None:
    """Writes Flax variables (either layout of the blocks) as the original's checkpoint
    (`{'model_state': ...}`).

    `.safetensors` needs only safetensors; `.pyth` / `.pth` / `.pt` use torch.save.
    """
    target = user_path(output)
    if target.exists() and not overwrite:
        raise ConversionError(f"{output} exists; pass --overwrite to replace it")
    state = mapping.flax_to_torch(layout.unrolled(dict(variables)))
    if output.endswith(".safetensors"):
        from safetensors.numpy import save
        target.write_bytes(save({k: np.ascontiguousarray(v) for k, v in state.items()}))
        return
    try:
        import torch
    except ImportError as e:
        raise ConversionError(f"writing {output} in torch.save format needs torch; "
                              "install it or write a .safetensors file instead") from e
    buffer = io.BytesIO()
    torch.save({"epoch": 0, "model_state": {k: torch.from_numpy(np.ascontiguousarray(v))
                                            for k, v in state.items()}}, buffer)
    target.write_bytes(buffer.getvalue())


def _parse_overrides(items: List[str]) -> Dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConversionError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m tadax.convert`."""
    parser = argparse.ArgumentParser(prog="python -m tadax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", choices=["zoo", "clip", "clip_hf", "convnext", "export"],
                        help="what the input is")
    parser.add_argument("--input", required=True, help="checkpoint file (or tadax dir for export)")
    parser.add_argument("--output", required=True, help="tadax checkpoint dir (or file for export)")
    parser.add_argument("--arch", help="named architecture (required for starting points)")
    parser.add_argument("--num-classes", type=int, help="classes of the new head (starting points)")
    parser.add_argument("--num-frames", type=int, help="input frames the model is meant for")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model config field, e.g. --set rf_head_dim=48")
    parser.add_argument("--upstream-config", metavar="YAML",
                        help="zoo: the original's settings file the model was trained with "
                             "(_BASE_* inheritance resolved); supplies what no weight shows")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="state_dict",
                        help="export: the original's state dict (.pyth/.safetensors), a serialized "
                             "jax.export (StableHLO) file, or a TensorFlow SavedModel directory")
    parser.add_argument("--platforms", default=",".join(serving.DEFAULT_PLATFORMS),
                        help="export jax_export/saved_model: platforms to lower for")
    parser.add_argument("--ema", action="store_true",
                        help="take the EMA weights (model_ema_state of a zoo file, or of a run)")
    parser.add_argument("--report", metavar="FILE",
                        help="zoo: write what was read off the weights, what was assumed and "
                             "whence, parameters per module and the preprocessing attached "
                             "(FILE.json: JSON, else Markdown)")
    parser.add_argument("--against-original", metavar="PATH",
                        help="with --report: add the per-block max error against the original "
                             "code, from its checkout at PATH (needs torch and einops)")
    parser.add_argument("--seed", type=int, default=0, help="init seed for new parameters")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except (ConversionError, mapping.WeightMismatchError, checkpoint_io.CheckpointError,
            torch_reader.CheckpointFormatError, ArchitectureError, UpstreamConfigError,
            BenchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def upstream_settings(path: str) -> Dict:
    """The model config fields an original settings file gives (`--upstream-config`)."""
    settings = load_upstream_settings(path)
    try:
        return upstream_fields(settings)[1]
    except ValueError as e:  # an architecture the settings name that tadax does not build
        raise UpstreamConfigError(f"{path}: {e}") from e


def load_for_export(path: str, ema: bool) -> Tuple[Dict, ml_collections.ConfigDict]:
    """(variables, model config) of a converted directory or a training run.

    A run's model config is the `model` block of the `config.json` that
    train.py writes into the run directory (found from the run, its
    `checkpoints/` or a step directory).
    """
    variables, model_cfg = load_weights(path, use_ema=ema)
    if model_cfg is not None:
        return variables, model_cfg
    try:
        return variables, run_config.read_run_config(path).model
    except FileNotFoundError:
        raise ConversionError(f"{path}: a run checkpoint without the run's config.json beside "
                              "it; pass the run directory") from None


def _export(args, overrides: Dict) -> int:
    variables, cfg = load_for_export(args.input, args.ema)
    if args.format == "state_dict":
        export_state_dict(variables, args.output, args.overwrite)
        print(f"wrote {args.output}")
        return 0
    if epath.Path(args.output).exists() and not args.overwrite:
        raise ConversionError(f"{args.output} exists; pass --overwrite to replace it")
    fields = dict(cfg.to_dict(), **overrides)
    if fields.get("family") == "tadaformer":
        fields["attention_impl"] = "xla"     # the artefacts run on every platform
    try:
        cfg = default_model_config(fields.pop("arch"), **fields)
    except ValueError as e:
        raise ConversionError(f"{args.input}: {e}") from e
    variables = layout.to_layout(dict(variables), cfg.scan_layers)
    platforms = [p for p in args.platforms.split(",") if p]
    unknown = sorted(set(platforms) - set(serving.KNOWN_PLATFORMS))
    if unknown or not platforms:
        raise ConversionError(f"--platforms {args.platforms!r}: give a comma-separated subset of "
                              f"{', '.join(serving.KNOWN_PLATFORMS)}")
    output = epath.Path(args.output)
    tmp = output.parent / (output.name + ".tmp-write")
    if tmp.exists():
        tmp.rmtree() if tmp.is_dir() else tmp.unlink()
    if args.format == "jax_export":
        serving.write_jax_export(variables, cfg, str(tmp), platforms)
    else:
        serving.write_saved_model(variables, cfg, str(tmp), platforms)
    if output.exists():
        output.rmtree() if output.is_dir() else output.unlink()
    tmp.rename(output)
    print(f"wrote {args.output}: {cfg.arch}, input (B, {cfg.num_frames}, {cfg.image_size}, "
          f"{cfg.image_size}, 3) float32 with any B -> logits (B, {cfg.num_classes})")
    return 0


def _run(args) -> int:
    if args.source != "export" and user_path(args.output).exists() and not args.overwrite:
        raise ConversionError(f"{args.output} exists; pass --overwrite to replace it")
    overrides = _parse_overrides(args.set)
    if args.num_frames:
        overrides["num_frames"] = args.num_frames
    if args.source == "export":
        return _export(args, overrides)
    if args.upstream_config and args.source != "zoo":
        raise ConversionError("--upstream-config describes a zoo model; starting points take --arch")
    if args.report and args.source != "zoo":
        raise ConversionError("--report describes a zoo conversion (what was read off the "
                              "weights); starting points take --arch")
    if args.against_original and not args.report:
        raise ConversionError("--against-original adds to the report: give --report FILE too")
    if args.against_original:
        check_checkout(args.against_original)
    if args.source != "zoo":
        if not args.arch:
            raise ConversionError("--arch is required for starting points")
        if args.num_classes:
            overrides["num_classes"] = args.num_classes
        try:   # an unknown --arch or --set field is refused before the input is read
            cfg = default_model_config(args.arch, **overrides)
        except ValueError as e:
            raise ConversionError(str(e)) from None
    given = dict(upstream_settings(args.upstream_config)) if args.upstream_config else {}
    given_from = {f: f"--upstream-config {args.upstream_config}" for f in given}
    given.update(overrides)
    given_from.update((f, "--num-frames" if f == "num_frames" and args.num_frames else "--set")
                      for f in overrides)
    raw = read_checkpoint_file(args.input)
    sd = select_state_dict(raw, args.input, ema=args.ema)
    if args.source == "zoo":
        try:
            cfg = infer_model_config(sd, **given)
        except ValueError as e:
            raise ConversionError(f"{args.input}: {e}") from None
        if args.arch and args.arch.split("_")[0] != cfg.arch.split("_")[0]:
            raise ConversionError(f"{args.input} holds a {cfg.arch} model, not {args.arch}")
        for line in unseen_settings(cfg, given):
            print(line, file=sys.stderr)
        variables = convert_zoo(sd, cfg, args.input)
        fresh: List[str] = []
        dropped: List[str] = []
    else:
        variables, dropped, fresh = convert_pretrained(args.source, sd, cfg, args.input, args.seed)
    if args.report:   # before anything is written: a failing comparison leaves no output
        conversion = report.build_report(source=args.input, output=args.output, ema=args.ema,
                                         state_dict=sd, cfg=cfg, variables=variables,
                                         given_from=given_from)
        if args.against_original:
            print(f"comparing with the original from {args.against_original} ...", flush=True)
            conversion["against_original"] = against_original.block_errors(
                args.against_original, cfg, sd, variables)
            for note in conversion["against_original"]["notes"]:
                print(f"note: {note}", file=sys.stderr)
    checkpoint_io.save_variables(args.output, variables, cfg, overwrite=args.overwrite)
    count = sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(variables.get("params", {})))
    print(f"wrote {args.output}: {cfg.arch}, {count:,} parameters")
    if dropped:
        print(f"  source keys left out on purpose ({len(dropped)}): {', '.join(dropped[:8])}"
              + (" ..." if len(dropped) > 8 else ""))
    if fresh:
        print(f"  new video parameters initialised fresh: {len(fresh)}")
    if args.report:
        report.write_report(conversion, args.report)
        rows = conversion.get("against_original", {}).get("rows")
        worst = (f"; against the original, the largest block error is "
                 f"{max(r['max_abs_error'] for r in rows[:-2]):.2g} and of the log-probabilities "
                 f"{rows[-1]['max_abs_error']:.2g}" if rows else "")
        print(f"report -> {args.report}{worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
