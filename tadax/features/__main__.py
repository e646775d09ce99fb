"""`python -m tadax.features`: the command line of `tadax.features` (split or folder
features in shards) and `tadax.features.windows` (features per window); see the package's
docstring for the usage."""

import os
import sys
from typing import Sequence

if __name__ == "__main__":   # before TensorFlow's first import
    from tadax import startup
    startup.import_tensorflow_quietly()

from tadax.features import extract as features  # noqa: E402
from tadax.features import windows  # noqa: E402
from tadax.train import cli  # noqa: E402


def main(argv: Sequence[str]) -> None:
    from absl import flags

    args = flags.FLAGS
    if len(argv) > 1:
        sys.exit(f"unexpected arguments: {argv[1:]}")
    cli.quiet_output()   # keep Orbax's info lines out of the output
    cli.initialize_distributed()
    try:
        cli.check_config_source(args.checkpoint, sys.argv)
    except ValueError as e:
        sys.exit(f"features: {e}")
    windowed = any(args[name].present for name in ("window", "stride", "fps"))
    if windowed:
        if not args.videos:
            sys.exit("features: --window/--stride/--fps cut the videos of a folder into windows: "
                     "give the folder with --videos (prepared splits hold clips, not whole videos)")
        try:
            summary = windows.extract_windows(
                args.config, checkpoint=args.checkpoint, output=args.output, videos=args.videos,
                window=args.window, stride=args.stride, fps=args.fps, use_ema=args.ema,
                process_index=args.host_index, process_count=args.host_count)
        except (ValueError, FileNotFoundError, OSError) as e:
            sys.exit(f"features: {e}")
        print(f"{args.output}: wrote the windows of {len(summary['written'])} videos "
              f"({len(summary['skipped'])} unreadable, listed in {windows.INDEX_FILE}'s "
              "'skipped'); " + (f"{windows.INDEX_FILE} lists all {summary['num_videos']}"
                               if summary["index"] else
                               f"{windows.INDEX_FILE} waits for the other hosts' videos"))
        return
    split = None if args.videos else (args.split or args.config.eval.test_split)
    try:
        summary = features.extract(args.config, checkpoint=args.checkpoint, output=args.output,
                          split=split, videos=args.videos, multi_view=not args.single_view,
                          use_ema=args.ema, process_index=args.host_index,
                          process_count=args.host_count)
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"features: {e}")
    print(f"{args.output}: wrote {len(summary['written'])} shards "
          f"({summary['skipped']} videos unreadable, listed in the shards' 'skipped')")


def _define_flags() -> None:
    from absl import flags

    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cli.define_config(
        cli.default_config(here, sys.argv),
        "Config (data, eval batch size, features settings; the model too for run "
        "checkpoints); default: the checkpoint's own (configs/checkpoint.py), as eval.py's.")
    flags.DEFINE_string("checkpoint", None, "Converted model directory or training run.",
                        required=True)
    flags.DEFINE_string("output", None, "Folder of feature shards.", required=True)
    flags.DEFINE_string("split", None, "Split of the prepared dataset (config.data.data_dir); "
                        "default: config.eval.test_split.")
    flags.DEFINE_string("videos", None, "A folder of video files instead of a split.")
    flags.DEFINE_bool("single_view", False, "The centre view only instead of clips x crops.")
    flags.DEFINE_bool("ema", False, "Use the EMA weights of a run checkpoint.")
    flags.DEFINE_integer("window", None, "Features per window: frames per window (at each "
                         "video's rate, or --fps); default: the span of the recipe's clip "
                         "(interval sampling). One .npy per video and index.json.")
    flags.DEFINE_integer("stride", None, "Features per window: frames between window starts; "
                         "default: a quarter of the window.")
    flags.DEFINE_float("fps", None, "Features per window: count frames at this rate (videos "
                       "resampled); default: the recipe's target rate, else each video's own.")
    flags.DEFINE_integer("host_index", None, "This process's share of the shards "
                         "(default: jax.process_index()).")
    flags.DEFINE_integer("host_count", None, "Processes sharing the work "
                         "(default: jax.process_count()).")


if __name__ == "__main__":
    from absl import app

    cli.exit_on_damaged_run_config(sys.argv)
    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
