"""The fine-tuning routes, at OpenAI's path (``/v1/fine_tuning/jobs``) and the
public reference's (``/v1/fine-tuning/jobs``): create, list, get, cancel,
events, checkpoints.

Create and cancel are commands to the scheduler (the single writer of jobs);
reads come from the store. Another org's job answers 404. ``auto``
hyperparameters are chosen here, from the training file's size, so the job
shows the numbers it trains with.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec
from quart import Quart, Response, g, request

from volt.control_api.errors import InvalidRequest, NotFound
from volt.control_api.files import finetune_commands, own_file
from volt.control_api.identity_routes import page_limit
from volt.control_api.scheduler_commands import json_response, known_query
from volt.control_api.serving import decode_request
from volt.finetune.jobs import JOB_KIND, kept_checkpoints, tuned_model
from volt.identity import Principal
from volt.protocol.finetune import (
    CheckpointMetrics,
    CreateFineTuningJobRequest,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCheckpointList,
    FineTuningJobEvent,
    FineTuningJobEventList,
    FineTuningJobList,
    Hyperparameters,
    JobError,
    JobHyperparameters,
    JobVolt,
    LoraOptions,
)
from volt.store.resources import ResourceRecord, ResourceStore
from volt.wire import JobCancel, JobCreate

BASES = ("/v1/fine_tuning/jobs", "/v1/fine-tuning/jobs")
_create = msgspec.json.Decoder(CreateFineTuningJobRequest)


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def job_object(record: ResourceRecord) -> FineTuningJob:
    spec, status = record.spec, record.status
    hyper = spec["hyperparameters"]
    error = status.get("error")
    return FineTuningJob(
        id=record.id, created_at=int(record.created_at),
        error=JobError(**error) if error else None,
        fine_tuned_model=status.get("fine_tuned_model"),
        finished_at=_int(status.get("finished_at")),
        hyperparameters=JobHyperparameters(
            n_epochs=hyper["n_epochs"], batch_size=hyper["batch_size"],
            learning_rate_multiplier=hyper["learning_rate_multiplier"]),
        model=spec["model"], organization_id=record.org_id, result_files=[],
        seed=spec["seed"], status=record.state,  # type: ignore[arg-type]
        trained_tokens=_int(status.get("trained_tokens")) if record.state == "succeeded"
        else None,
        training_file=spec["training_file"], validation_file=spec.get("validation_file"),
        metadata=spec.get("metadata"), user_provided_suffix=spec.get("suffix") or None,
        volt=JobVolt(metro=spec["metro"], lora_rank=hyper["lora_rank"],
                     lora_alpha=hyper["lora_alpha"], step=int(status.get("step", 0)),
                     total_steps=int(status.get("total_steps", 0))))


def _after(items: list[dict[str, Any]], after: str | None, noun: str) -> list[dict[str, Any]]:
    if not after:
        return items
    for index, item in enumerate(items):
        if item["id"] == after:
            return items[index + 1:]
    raise InvalidRequest(f"`after` is not {noun} of this job.", param="after")


def register_fine_tuning_routes(app: Quart, services: Any) -> None:
    async def own_job(principal: Principal, job_id: str) -> ResourceRecord:
        record = await ResourceStore(services.db).get(JOB_KIND, job_id,
                                                      org_id=principal.org_id)
        if record is None or not principal.org_id:
            raise NotFound(f"No fine-tuning job {job_id}.", param="job_id",
                           code="job_not_found")
        return record

    async def create_job() -> Response:
        principal: Principal = g.principal
        body: bytes = await request.get_data(as_text=False)  # type: ignore[assignment]
        req = decode_request(_create, body)
        if req.integrations:
            raise InvalidRequest("Integrations are not supported.", param="integrations")
        training = await own_file(services, principal, req.training_file, "training_file")
        if req.validation_file is not None:
            await own_file(services, principal, req.validation_file, "validation_file")
        card = services.router.catalog.get(req.model)
        if card is None or card.org_id or not principal.catalog.allows_model(req.model):
            raise InvalidRequest(
                f"The model `{req.model}` cannot be fine-tuned: choose a base model from "
                "GET /v1/models (tuned models cannot be tuned again).", param="model",
                code="model_not_available")
        if req.hyperparameters is not None and req.method is not None:
            raise InvalidRequest("Give `hyperparameters` or `method`, not both.",
                                 param="hyperparameters")
        hyper = req.hyperparameters or Hyperparameters()
        if req.method is not None and req.method.supervised is not None:
            hyper = req.method.supervised.hyperparameters or Hyperparameters()
        examples = int(training.spec["examples"])
        lora = req.volt or LoraOptions()
        settings = services.config.finetune
        answer = await finetune_commands(services).ask(JobCreate(
            org_id=principal.org_id, created_by=principal.credential_id, model=req.model,
            training_file=req.training_file, validation_file=req.validation_file,
            suffix=req.suffix or "", seed=req.seed if req.seed is not None
            else secrets.randbelow(2**31),
            n_epochs=settings.default_epochs if hyper.n_epochs == "auto" else hyper.n_epochs,
            # auto: about 0.2% of the examples, as OpenAI picks it, within 1..32.
            batch_size=max(1, min(32, examples // 500)) if hyper.batch_size == "auto"
            else hyper.batch_size,
            learning_rate_multiplier=1.0 if hyper.learning_rate_multiplier == "auto"
            else hyper.learning_rate_multiplier,
            lora_rank=lora.lora_rank, lora_alpha=lora.lora_alpha))
        job_id = getattr(answer, "job_id", "")
        return json_response(job_object(await own_job(principal, job_id)))

    async def list_jobs() -> Response:
        principal: Principal = g.principal
        known_query(request.args, ("limit", "after", "metadata"))
        store = ResourceStore(services.db)
        try:
            page = await store.page(JOB_KIND, principal.org_id, limit=page_limit(request.args),
                                    after=request.args.get("after") or None)
        except KeyError:
            raise InvalidRequest("`after` is not a job of this organization.",
                                 param="after") from None
        return json_response(FineTuningJobList(data=[job_object(r) for r in page.records],
                                               has_more=page.has_more))

    async def get_job(job_id: str) -> Response:
        return json_response(job_object(await own_job(g.principal, job_id)))

    async def cancel_job(job_id: str) -> Response:
        principal: Principal = g.principal
        await own_job(principal, job_id)
        await finetune_commands(services).ask(JobCancel(org_id=principal.org_id,
                                                        job_id=job_id))
        return json_response(job_object(await own_job(principal, job_id)))

    async def job_events(job_id: str) -> Response:
        known_query(request.args, ("limit", "after"))
        record = await own_job(g.principal, job_id)
        try:
            page = await ResourceStore(services.db).log(
                record.id, limit=page_limit(request.args), after=request.args.get("after"))
        except KeyError:
            raise InvalidRequest("`after` is not an event of this job.", param="after") from None
        return json_response(FineTuningJobEventList(
            data=[FineTuningJobEvent(**e) for e in page.entries], has_more=page.has_more))

    async def job_checkpoints(job_id: str) -> Response:
        known_query(request.args, ("limit", "after"))
        record = await own_job(g.principal, job_id)
        limit = page_limit(request.args)
        model = tuned_model(record)
        kept = list(reversed(kept_checkpoints(record)))
        rest = _after(kept, request.args.get("after"), "a checkpoint")[:limit]
        data = [FineTuningJobCheckpoint(
            id=c["id"], created_at=c["created_at"],
            fine_tuned_model_checkpoint=model.checkpoint(c["step_number"]).id,
            fine_tuning_job_id=record.id, step_number=c["step_number"],
            metrics=CheckpointMetrics(step=c["step_number"], train_loss=c.get("train_loss"),
                                      valid_loss=c.get("valid_loss")))
            for c in rest]
        return json_response(FineTuningJobCheckpointList(
            data=data, has_more=False, first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None))

    for base in BASES:
        slug = base.replace("/", "_").replace("-", "_")
        app.add_url_rule(base, f"create_job{slug}", create_job, methods=["POST"])
        app.add_url_rule(base, f"list_jobs{slug}", list_jobs, methods=["GET"])
        app.add_url_rule(base + "/<job_id>", f"get_job{slug}", get_job, methods=["GET"])
        app.add_url_rule(base + "/<job_id>/cancel", f"cancel_job{slug}", cancel_job,
                         methods=["POST"])
        app.add_url_rule(base + "/<job_id>/events", f"job_events{slug}", job_events,
                         methods=["GET"])
        app.add_url_rule(base + "/<job_id>/checkpoints", f"job_checkpoints{slug}",
                         job_checkpoints, methods=["GET"])
