"""The training loop: resume or initialise, train, validate, checkpoint, evaluate.

`train_and_evaluate(config, workdir)` runs the same on one CPU, many local
devices or many hosts (call `jax.distributed.initialize()` first). A run
directory holds everything of a run; rerunning the same command continues
from its newest checkpoint with the same data order, random numbers and
learning rate, so an interrupted run ends where an uninterrupted one does.
"""

import contextlib
import json
import time
from typing import Any, Dict, Optional

import jax
import ml_collections
import numpy as np

from tadax.data import pipeline
from tadax.errors import ConfigError, NonFiniteLossError, RunDirectoryError
from tadax.models import build_model
from tadax.paths import out_of_space, user_path
from tadax.startup import on_ctrl_c
from tadax.train import evaluation, mixup, plots, preflight, run_lock
from tadax.train.checkpointing import RunCheckpoints, finished_steps, load_weights
from tadax.train.logging import MetricLogger, read_history
from tadax.train.optim import build_optimizer, describe_groups
from tadax.train.preemption import Preempted, StopWatch
from tadax.train.resume import restore_newest
from tadax.train.run_config import record_run_config, resume_changes
from tadax.train.sharding import global_batch, make_mesh
from tadax.train.state import (abstract_variables, create_train_state, select_pretrained,
                               train_state_spec)
from tadax.train.steps import eval_variables, make_eval_step, make_train_step


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """`config.train.steps_per_epoch`, or the train split's size over the global batch."""
    if config.train.steps_per_epoch:
        return int(config.train.steps_per_epoch)
    examples = pipeline.num_examples(config.data, "train")
    return max(1, examples // config.train.global_batch_size)


def _check_batch_layout(config: ml_collections.ConfigDict) -> None:
    batch, accum = config.train.global_batch_size, config.train.grad_accum_steps
    unit = jax.device_count() * accum
    if batch % unit:
        raise ConfigError(f"train.global_batch_size={batch} must be a multiple of "
                         f"{jax.device_count()} devices x {accum} accumulation steps")
    if mixup.mixing_enabled(config.data) and batch // unit < 2:
        raise ConfigError(f"mixup/cutmix pairs the clips of each device's share of a "
                          f"micro-batch: train.global_batch_size={batch} over "
                          f"{jax.device_count()} devices x {accum} accumulation steps leaves "
                          f"{batch // unit}; it needs at least 2")
    if config.eval.batch_size % jax.device_count():
        raise ConfigError(f"eval.batch_size={config.eval.batch_size} must be a multiple of "
                         f"the {jax.device_count()} devices")


def evaluate(eval_step, variables, config: ml_collections.ConfigDict, mesh, split: str,
             multi_view: bool, logger: MetricLogger):
    """(views, videos, metrics) of `split`, single- or multi-view."""
    batches = pipeline.build_eval_iterator(
        config.data, split=split, global_batch_size=config.eval.batch_size,
        multi_view=multi_view, process_index=jax.process_index(),
        process_count=jax.process_count())
    start = time.time()
    views = evaluation.run_views(eval_step, variables, batches, mesh)
    videos = evaluation.aggregate_views(views["probs"], views["label"], views["video_id"])
    result = evaluation.metrics(views, videos)
    logger.line(f"{split} ({'multi' if multi_view else 'single'}-view): top-1 "
                f"{result['top1']:.2f} top-5 {result['top5']:.2f} over {result['num_videos']} "
                f"videos, {result['num_views']} views in {time.time() - start:.0f}s")
    return views, videos, result


def _say(text: str) -> None:
    """Prints one line on the lead host."""
    if jax.process_index() == 0:
        print(text, flush=True)


def _out_of_space_error(error: BaseException, ckpt_dir, step: int) -> Optional[RunDirectoryError]:
    """The one-line error for a write that found no space (None for any other error)."""
    found = out_of_space(error)
    if found is None:
        return None
    path, what = found
    steps = finished_steps(ckpt_dir)
    kept = (f"its checkpoints up to step {steps[-1]} are intact; free space and rerun the same "
            f"command to resume from step {steps[-1]}") if steps else \
        "it has no checkpoint yet; free space and rerun the same command"
    return RunDirectoryError(f"out of space ({what}) writing {path or ckpt_dir.parent}: the run "
                             f"stopped at step {step}; {kept}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       takeover_lock: bool = False) -> Dict[str, Any]:
    """Trains `config` in `workdir` (local or gs://...; resuming if it has checkpoints);
    returns the final metrics.

    The run holds the run directory's lock (`run_lock`) while it writes there;
    `takeover_lock` takes over the lock of a run that is gone. Raises `Preempted`
    after saving the current step when the run is asked to stop (SIGTERM or Ctrl-C on
    one process, JAX's preemption sync point on several), and `RunDirectoryError` when
    another run holds the directory, the config differs from the run's in a field that
    may not change, no checkpoint restores (each before anything is written) or a write
    finds no space (the checkpoints written before are intact).
    """
    workdir = user_path(workdir)
    _check_batch_layout(config)
    model = build_model(config.model)     # a model that cannot run here stops before any write
    splits = {"train", config.eval.val_split}
    if config.eval.final_multi_view:
        splits.add(config.eval.test_split)
    preflight.check_data(config.data, *sorted(splits))
    epoch_steps = steps_per_epoch(config)
    total = int(round(config.train.epochs * epoch_steps))
    eval_every = config.eval.every_steps or epoch_steps
    ckpt_dir = workdir / "checkpoints"
    resuming = bool(finished_steps(ckpt_dir))
    preflight.check_start(config.init, resuming=resuming)
    mesh = make_mesh(config.mesh)
    abstract = abstract_variables(model, config.model)
    tx, schedule = build_optimizer(abstract["params"], config.optimizer, epoch_steps,
                                   config.train.epochs)
    abstract_state, shardings = train_state_spec(model, tx, config, mesh)

    with run_lock.hold(workdir, takeover_lock) as lock, StopWatch() as stop:
        changes = resume_changes(config, workdir) if resuming else None
        resumed = restore_newest(workdir, abstract_state, say=_say)
        if resumed is not None:
            _, state, position = resumed
            start = int(position["step"])
        else:
            pretrained = None
            if config.init.checkpoint:
                loaded, _ = load_weights(config.init.checkpoint)
                pretrained = select_pretrained(loaded, abstract, config.init.fresh)
            state = create_train_state(model, tx, config, shardings, pretrained)
            start = 0
        step = start
        logger = ckpts = None
        try:
            if jax.process_index() == 0:
                record_run_config(config, workdir, changes, start)
            ckpts = RunCheckpoints(ckpt_dir, config.checkpoint, every=(eval_every,),
                                   on_steps=(total,))
            logger = MetricLogger(workdir, total, start, config.train.global_batch_size)
            logger.line(
                f"{config.model.arch}: {jax.device_count()} devices on {jax.process_count()} "
                f"hosts, mesh {dict(mesh.shape)}; {total} steps of "
                f"{config.train.global_batch_size} clips ({epoch_steps} per epoch); "
                + (f"resuming at step {start}" if resumed is not None else
                   f"initialised from {config.init.checkpoint or 'scratch'}"))
            groups = describe_groups(abstract["params"], config.optimizer)
            logger.line("parameter groups (lr mult, wd mult): arrays  " + ", ".join(
                f"({lr:g}, {wd:g}): {n}" for (lr, wd), n in sorted(groups.items())))

            train_step = make_train_step(model, tx, schedule, config, mesh, shardings)
            eval_step = make_eval_step(model, mesh, eval_variables(shardings, config.eval.use_ema))
            batches = pipeline.build_train_iterator(
                config.data, global_batch_size=config.train.global_batch_size,
                seed=config.seed, start_step=start, process_index=jax.process_index(),
                process_count=jax.process_count())

            log_every = config.train.log_every_steps
            sums: Dict[str, float] = {}
            count = 0

            def consume(step, metrics):
                nonlocal sums, count
                values = jax.device_get(metrics)
                if not np.isfinite(values["loss"]):
                    ckpts.wait()
                    raise NonFiniteLossError(
                        f"loss is {values['loss']} at step {step}: stopping. The last good "
                        f"checkpoint is step {ckpts.latest_step()} in {ckpts.directory}; lower "
                        "the learning rate or check the data before resuming.")
                sums = {k: sums.get(k, 0.0) + float(v) for k, v in values.items()}
                count += 1
                if step % log_every == 0 or step == total:
                    logger.train(step, {k: v / count for k, v in sums.items()})
                    sums, count = {}, 0

            pending = None
            for step in range(start + 1, total + 1):
                lock.check()
                local = next(batches)
                batch = global_batch({k: local[k] for k in ("video", "label")}, mesh)
                state, metrics = train_step(state, batch)
                if pending is not None:
                    consume(*pending)
                pending = (step, metrics)
                preempted = stop.requested or ckpts.reached_preemption(step)
                # Orbax decides (every_steps, validations, the last step, every_secs,
                # preemption); validation steps are among its save steps.
                do_save = preempted or ckpts.should_save(step)
                do_eval = (step % eval_every == 0 or step == total) and not preempted
                if not (do_eval or do_save or step % log_every == 0):
                    continue
                consume(*pending)
                pending = None
                val = None
                if do_eval:
                    _, _, result = evaluate(eval_step, eval_variables(state, config.eval.use_ema),
                                            config, mesh, config.eval.val_split, False, logger)
                    val = {"val/top1": result["top1"], "val/top5": result["top5"]}
                    logger.write(step, val)
                if do_save:
                    ckpts.save(step, state, step, val)
                if preempted:
                    ckpts.wait()
                    raise Preempted(step, ckpts.directory, stop.signum)
            ckpts.wait()
            on_ctrl_c("interrupted (Ctrl-C) after the last step, which is saved: rerun the "
                      "same command to write the final evaluation")
            stop.close()   # a Ctrl-C from here on ends the process (nothing left to save)
            lock.check()

            final: Dict[str, Any] = {"step": total}
            if config.eval.final_multi_view:
                views, videos, result = evaluate(
                    eval_step, eval_variables(state, config.eval.use_ema), config, mesh,
                    config.eval.test_split, True, logger)
                if jax.process_index() == 0:
                    names = pipeline.dataset_class_names(config.data)
                    if names is not None and len(names) != config.model.num_classes:
                        names = None
                    evaluation.write_report(workdir / "eval", views, videos, result, names)
                final.update({f"test/{k}": v for k, v in result.items()
                              if k != "per_class_accuracy"})
            if jax.process_index() == 0:
                history = read_history(logger.path)
                for entry in history:   # the last value of every logged metric
                    final.update({k: v for k, v in entry.items() if k != "step"})
                plots.training_curves(history, workdir / "training_curves.png",
                                      title=config.get("name", ""))
                (workdir / "final_metrics.json").write_text(json.dumps(final, indent=1))
            logger.close()
            ckpts.close()
            return final
        except Exception as e:
            error = _out_of_space_error(e, ckpt_dir, step)
            for part in (logger, ckpts):   # a failed save fails again when closed: once is told
                with contextlib.suppress(Exception):
                    if part is not None:
                        part.close()
            if error is None:
                raise
            raise error from None
