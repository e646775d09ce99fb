"""Writing shards with an Apache Beam pipeline: one shard is one unit of work.

The driver plans the split as the local path does (`splits.plan_split`) and
saves each missing shard's videos and options beside its bookkeeping
(`_meta/SHARD.job.json`, deleted when the pipeline is done), so the pipeline
itself only carries file names, whatever the dataset's size. The runner's
workers each read a job, decode, encode and write its shard with `shards.encode_and_write_shard`
(the local path's writer), so the shards and report are the same bytes as a
local run. Runs with `--runner DirectRunner` (add `--direct_num_workers N
--direct_running_mode multi_processing` for N processes) and unchanged with
Dataflow, Flink or Spark runners, whose workers need this package installed and
the videos and `--out` on storage they can all reach. Apache Beam is an
optional extra (`pip install '.[beam]'`).
"""

import dataclasses
import json
import logging
from typing import Dict, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from etils import epath

from tadax.prepare.annotations import Entry
from tadax.prepare.encode import EncodeOptions
from tadax.prepare.shards import ShardJob, encode_and_write_shard


def check_runner(pipeline_args: Sequence[str]) -> None:
    """Raises ValueError, one line, when no pipeline can be made from `pipeline_args` here
    (unknown runner, its dependencies missing, required options missing); call before any
    work."""
    try:
        beam.Pipeline(options=PipelineOptions(list(pipeline_args)))
    except (ValueError, ImportError) as e:
        name = PipelineOptions(list(pipeline_args)).view_as(StandardOptions).runner
        reason = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise ValueError(f"--runner {name}: {reason}") from e


def _job_path(job: ShardJob) -> str:
    return job.meta_path[:-len(".json")] + ".job.json"


def _save_job(job: ShardJob, opts: EncodeOptions) -> str:
    """Writes `job` and `opts` as JSON next to the shard's bookkeeping; returns the file."""
    path = _job_path(job)
    epath.Path(path).write_text(json.dumps({
        "index": job.index, "path": job.path, "meta_path": job.meta_path,
        "entries": [dataclasses.asdict(e) for e in job.entries],
        "opts": dataclasses.asdict(opts)}))
    return path


def _write_one(job_path: str) -> None:
    """Reads a job file and writes its shard (runs on a worker)."""
    saved = json.loads(epath.Path(job_path).read_text())
    job = ShardJob(saved["index"], saved["path"], saved["meta_path"],
                   tuple(Entry(**e) for e in saved["entries"]))
    meta = encode_and_write_shard(job, EncodeOptions(**saved["opts"]))
    logging.info("%s: %d videos written, %d skipped", job.path, meta["written"],
                 len(meta["skipped"]))


def write_shards(todo: Sequence[ShardJob], opts: EncodeOptions, pipeline_args: Sequence[str]
                 ) -> Dict[int, dict]:
    """Writes the shards `todo` with a Beam pipeline built from `pipeline_args`; returns
    {shard index: bookkeeping}, read back from the bookkeeping files the workers wrote."""
    if not todo:
        return {}
    job_files = [_save_job(job, opts) for job in todo]
    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
        _ = (pipeline
             | "Jobs" >> beam.Create(job_files)
             | "Spread" >> beam.Reshuffle()      # no fusion: shards go to many workers
             | "EncodeAndWrite" >> beam.Map(_write_one))
    for path in job_files:
        epath.Path(path).unlink()
    return {job.index: json.loads(epath.Path(job.meta_path).read_text()) for job in todo}
