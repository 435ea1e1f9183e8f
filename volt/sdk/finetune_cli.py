"""``volt files``, ``volt fine-tune`` and ``volt models``: upload training
data, start a LoRA fine-tune, follow it (``--wait`` prints its events as they
come), cancel it; list the models you can call, delete a tuned one."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from volt.sdk._cli_common import client_for, guarded, show, when

ENDED = ("succeeded", "failed", "cancelled")


def _file_table(files: Any) -> str:
    rows = [f"{'ID':<30} {'BYTES':>9} {'EXAMPLES':>8} {'METRO':<6} {'CREATED':<16} FILENAME"]
    for f in files:
        volt = f.volt
        rows.append(f"{f.id:<30} {f.bytes:>9} {volt.examples if volt else '-':>8} "
                    f"{volt.metro if volt else '-':<6} {when(f.created_at):<16} {f.filename}")
    return "\n".join(rows)


def _job_table(jobs: Any) -> str:
    rows = [f"{'ID':<30} {'STATUS':<17} {'MODEL':<10} {'STEP':>11} {'CREATED':<16} "
            "FINE-TUNED MODEL"]
    for job in jobs:
        step = f"{job.volt.step}/{job.volt.total_steps}" if job.volt else "-"
        rows.append(f"{job.id:<30} {job.status:<17} {job.model:<10} {step:>11} "
                    f"{when(job.created_at):<16} {job.fine_tuned_model or '-'}")
    return "\n".join(rows)


def _job_detail(job: Any) -> str:
    lines = [_job_table([job])]
    if job.error is not None:
        lines.append(f"error: {job.error.message}")
    return "\n".join(lines)


def _upload(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        show(volt.files.upload(Path(args.path), metro=args.metro), args,
             lambda f: _file_table([f]))


def _files(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        show(volt.files.list(limit=args.limit), args, lambda page: _file_table(page.data))


def _file_get(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        show(volt.files.get(args.file_id), args, lambda f: _file_table([f]))


def _file_content(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        data = volt.files.content(args.file_id)
    if args.output:
        Path(args.output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)


def _checkpoints(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        page = volt.fine_tuning.checkpoints(args.job_id)
    show(page, args, lambda p: "\n".join(
        f"{c.step_number:>8} {c.metrics.train_loss if c.metrics.train_loss is not None else '-'}"
        f"  {c.fine_tuned_model_checkpoint}" for c in p.data))


def _file_delete(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        show(volt.files.delete(args.file_id), args, lambda d: f"{d.id} deleted")


def _follow(volt: Any, job: Any) -> Any:
    """Print the job's events oldest first until it ends."""
    seen: set[str] = set()
    while True:
        events = volt.fine_tuning.events(job.id, limit=100).data
        for event in reversed(events):
            if event.id not in seen:
                seen.add(event.id)
                print(f"{when(event.created_at)} {event.message}", file=sys.stderr)
        if job.status in ENDED:
            return job
        time.sleep(1)
        job = volt.fine_tuning.get(job.id)


def _create(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        training = args.training_file
        if Path(training).is_file():  # a path: upload it first
            training = volt.files.upload(Path(training), metro=args.metro).id
            print(f"uploaded {args.training_file} as {training}", file=sys.stderr)
        job = volt.fine_tuning.create(
            args.model, training, validation_file=args.validation_file, suffix=args.suffix,
            seed=args.seed, n_epochs=args.epochs, batch_size=args.batch_size,
            learning_rate_multiplier=args.learning_rate_multiplier, lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha)
        if args.wait:
            job = _follow(volt, job)
    show(job, args, _job_detail)
    if args.wait and job.status != "succeeded":
        sys.exit(1)


def _jobs(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        show(volt.fine_tuning.list(limit=args.limit), args, lambda page: _job_table(page.data))


def _get(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        job = volt.fine_tuning.get(args.job_id)
        if args.wait:
            job = _follow(volt, job)
    show(job, args, _job_detail)


def _cancel(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        show(volt.fine_tuning.cancel(args.job_id), args, _job_detail)


def _events(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        page = volt.fine_tuning.events(args.job_id, limit=args.limit)
    show(page, args, lambda p: "\n".join(f"{when(e.created_at)} {e.level:<5} {e.message}"
                                         for e in reversed(p.data)))


def _model_table(models: Any) -> str:
    rows = [f"{'CREATED':<16} {'OWNED BY':<24} ID"]
    rows += [f"{when(m.created):<16} {m.owned_by:<24} {m.id}" for m in models]
    return "\n".join(rows)


def _models(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        show(volt.models.list(), args, lambda page: _model_table(page.data))


def _model_get(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        show(volt.models.get(args.model_id), args, lambda m: _model_table([m]))


def _model_delete(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        show(volt.models.delete(args.model_id), args, lambda d: f"{d.id} deleted")


def add_finetune_commands(commands: Any, client: argparse.ArgumentParser) -> None:
    files = commands.add_parser("files", help="training files").add_subparsers(
        dest="files", required=True)
    upload = files.add_parser("upload", parents=[client],
                              help="upload a JSONL file of chat examples")
    upload.add_argument("path")
    upload.add_argument("--metro", help="where to store it (training data stays there)")
    upload.set_defaults(func=guarded(_upload))
    listing = files.add_parser("list", parents=[client], help="list your files")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=guarded(_files))
    for name, text, run in (("get", "show a file", _file_get),
                            ("delete", "delete a file (its bytes are purged)", _file_delete)):
        sub = files.add_parser(name, parents=[client], help=text)
        sub.add_argument("file_id")
        sub.set_defaults(func=guarded(run))

    content = files.add_parser("content", parents=[client], help="download a file's content")
    content.add_argument("file_id")
    content.add_argument("--output", "-o", help="write it here (default: standard output)")
    content.set_defaults(func=guarded(_file_content))

    tune = commands.add_parser("fine-tune", help="LoRA fine-tuning jobs").add_subparsers(
        dest="fine_tune", required=True)
    create = tune.add_parser("create", parents=[client], help="start a fine-tune")
    create.add_argument("--model", required=True, help="the base model (e.g. volt-tiny)")
    create.add_argument("--training-file", required=True,
                        help="a file id, or a local JSONL path (uploaded first)")
    create.add_argument("--validation-file")
    create.add_argument("--metro", help="with a local path: where to store it")
    create.add_argument("--suffix")
    create.add_argument("--seed", type=int)
    create.add_argument("--epochs", type=int)
    create.add_argument("--batch-size", type=int)
    create.add_argument("--learning-rate-multiplier", type=float)
    create.add_argument("--lora-rank", type=int)
    create.add_argument("--lora-alpha", type=int)
    create.add_argument("--wait", action="store_true",
                        help="print the job's events until it ends (exit 1 unless it succeeds)")
    create.set_defaults(func=guarded(_create))
    jobs = tune.add_parser("list", parents=[client], help="list your jobs")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(func=guarded(_jobs))
    get = tune.add_parser("get", parents=[client], help="show a job")
    get.add_argument("job_id")
    get.add_argument("--wait", action="store_true", help="follow it until it ends")
    get.set_defaults(func=guarded(_get))
    cancel = tune.add_parser("cancel", parents=[client], help="cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=guarded(_cancel))
    checkpoints = tune.add_parser("checkpoints", parents=[client],
                                  help="a job's kept checkpoints (step, training loss)")
    checkpoints.add_argument("job_id")
    checkpoints.set_defaults(func=guarded(_checkpoints))
    events = tune.add_parser("events", parents=[client], help="a job's events, oldest first")
    events.add_argument("job_id")
    events.add_argument("--limit", type=int, default=50)
    events.set_defaults(func=guarded(_events))

    models = commands.add_parser("models", help="the models you can call").add_subparsers(
        dest="models", required=True)
    models.add_parser("list", parents=[client], help="list them").set_defaults(
        func=guarded(_models))
    for name, text, run in (("get", "show a model", _model_get),
                            ("delete", "delete a fine-tuned model for good (a job's model "
                                       "takes its checkpoints along)", _model_delete)):
        sub = models.add_parser(name, parents=[client], help=text)
        sub.add_argument("model_id")
        sub.set_defaults(func=guarded(run))
