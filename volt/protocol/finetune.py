"""Request and response types of the files and fine-tuning routes, in OpenAI's
shapes (``File``, ``FineTuningJob``, its events and checkpoints), with Volt's
additions under ``volt``. The API validates with them, ``/openapi.yaml`` is
generated from them, and the SDK decodes with them. Times are Unix seconds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Auto = Literal["auto"]
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed",
                    "cancelled"]


class FileVolt(msgspec.Struct, kw_only=True):
    metro: str
    """Where the file is stored (and where jobs on it train)."""
    examples: int


class FileObject(msgspec.Struct, kw_only=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    object: Literal["file"] = "file"
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None
    volt: FileVolt | None = None


class FileList(msgspec.Struct, kw_only=True):
    data: list[FileObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
    object: Literal["list"] = "list"


class FileDeleted(msgspec.Struct, kw_only=True):
    id: str
    deleted: bool = True
    object: Literal["file"] = "file"


class Hyperparameters(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    n_epochs: Annotated[int, msgspec.Meta(ge=1, le=50)] | Auto = "auto"
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=256)] | Auto = "auto"
    learning_rate_multiplier: Annotated[float, msgspec.Meta(gt=0, le=100)] | Auto = "auto"


class Supervised(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    hyperparameters: Hyperparameters | None = None


class Method(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal["supervised"]
    """Volt trains LoRA adapters with supervised fine-tuning (not DPO or RL)."""
    supervised: Supervised | None = None


class LoraOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    lora_rank: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    lora_alpha: Annotated[int, msgspec.Meta(ge=1, le=256)] = 16


class CreateFineTuningJobRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,64}$")] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None
    """Not supported (a non-empty list is refused)."""
    volt: LoraOptions | None = None


class JobError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(msgspec.Struct, kw_only=True):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class JobVolt(msgspec.Struct, kw_only=True):
    metro: str
    lora_rank: int
    lora_alpha: int
    step: int = 0
    total_steps: int = 0


class FineTuningJob(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: JobStatus
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    volt: JobVolt | None = None


class FineTuningJobList(msgspec.Struct, kw_only=True):
    data: list[FineTuningJob]
    has_more: bool
    object: Literal["list"] = "list"


class FineTuningJobEvent(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] = {}
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"


class FineTuningJobEventList(msgspec.Struct, kw_only=True):
    data: list[FineTuningJobEvent]
    has_more: bool
    object: Literal["list"] = "list"


class CheckpointMetrics(msgspec.Struct, kw_only=True, omit_defaults=True):
    step: int
    train_loss: float | None = None
    valid_loss: float | None = None


class FineTuningJobCheckpoint(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"


class FineTuningJobCheckpointList(msgspec.Struct, kw_only=True):
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
    object: Literal["list"] = "list"
