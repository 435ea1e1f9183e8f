"""The files routes: training data, uploaded once, stored in its metro.

``POST /v1/files`` (multipart: ``file``, ``purpose=fine-tune``, and Volt's
``metro``) checks the JSONL line by line (``volt/finetune/dataset.py``) and
names the first bad line; the bytes go sealed to the metro's blob store
(``volt/finetune/blobs.py``), then the scheduler records the file (the single
writer; the record holds no line of it). Reads come from the store; another
org's file answers 404. ``DELETE`` purges the blob's chunks: deleted for real.
Nothing here logs a byte of a file.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import PurePosixPath
from typing import Any

from quart import Quart, Response, g, request

from volt.control_api.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
)
from volt.control_api.identity_routes import page_limit
from volt.control_api.scheduler_commands import SchedulerCommands, json_response, known_query
from volt.finetune.blobs import BlobError, Blobs, file_blob
from volt.finetune.dataset import InvalidFile, parse
from volt.finetune.jobs import FILE_KIND, FILE_PROCESSED
from volt.identity import Principal
from volt.protocol.finetune import FileDeleted, FileList, FileObject, FileVolt
from volt.store.resources import ResourceRecord, ResourceStore
from volt.wire import FINETUNE, FileDelete, FileRecord, FinetuneRefused, subjects

FORM_FIELDS = ("file", "purpose", "metro")


def file_object(record: ResourceRecord) -> FileObject:
    spec = record.spec
    return FileObject(id=record.id, bytes=int(spec["bytes"]), created_at=int(record.created_at),
                      filename=spec["filename"], purpose=spec["purpose"],
                      volt=FileVolt(metro=spec["metro"], examples=int(spec["examples"])))


def finetune_commands(services: Any) -> SchedulerCommands:
    assert services.nc is not None
    return SchedulerCommands(services.nc, subjects.SCHED_FINETUNE, FINETUNE, FinetuneRefused,
                             "file or job")


async def own_file(services: Any, principal: Principal, file_id: str,
                   param: str = "file_id") -> ResourceRecord:
    record = await ResourceStore(services.db).get(FILE_KIND, file_id, org_id=principal.org_id)
    if record is None or record.state != FILE_PROCESSED or not principal.org_id:
        raise NotFound(f"No file {file_id}.", param=param, code="file_not_found")
    return record


def choose_metro(services: Any, principal: Principal, asked: str | None) -> str:
    """Where the file is stored: the metro asked for, else the org's only one,
    else the fleet's only one; never a metro the org may not use."""
    allowed = principal.catalog.metros
    known = services.router.metros
    if asked:
        if allowed is not None and asked not in allowed:
            raise PermissionDenied(f"Your organization may not use metro {asked}.",
                                   param="metro", code="metro_not_allowed")
        if asked not in known:
            raise InvalidRequest(f"There is no metro {asked}; metros: "
                                 f"{', '.join(sorted(known))}.", param="metro",
                                 code="unknown_metro")
        return str(asked)
    choices = sorted(allowed if allowed is not None else known)
    if len(choices) == 1:
        return str(choices[0])
    raise InvalidRequest("Name the metro to store the file in (the `metro` form field): "
                         f"one of {', '.join(choices) or 'none yet'}. Training data stays in "
                         "the metro it is stored in.", param="metro", code="metro_required")


def register_file_routes(app: Quart, services: Any) -> None:
    def blobs() -> Blobs:
        blob_store: Blobs | None = services.blobs
        assert blob_store is not None
        return blob_store

    @app.post("/v1/files")
    async def create_file() -> Response:
        principal: Principal = g.principal
        form = await request.form
        files = await request.files
        for name in (*form.keys(), *files.keys()):
            if name not in FORM_FIELDS:
                raise InvalidRequest(f"Unknown form field {name!r}; this route takes "
                                     f"{', '.join(FORM_FIELDS)}.", param=name)
        purpose = form.get("purpose")
        if purpose != "fine-tune":
            raise InvalidRequest("`purpose` must be `fine-tune`: Volt stores files for "
                                 "fine-tuning.", param="purpose")
        upload = files.get("file")
        if upload is None:
            raise InvalidRequest("The `file` part is missing (multipart/form-data).",
                                 param="file")
        data = upload.read()
        settings = services.config.finetune
        if len(data) > settings.max_file_bytes:
            raise PayloadTooLarge(f"The file is larger than {settings.max_file_bytes} bytes.")
        try:
            examples = parse(data, max_examples=settings.max_examples)
        except InvalidFile as exc:
            raise InvalidRequest(f"Invalid file: {exc}", param="file",
                                 code="invalid_file") from None
        metro = choose_metro(services, principal, form.get("metro") or None)
        filename = PurePosixPath((upload.filename or "upload.jsonl").replace("\\", "/")).name
        file_id = "file-" + secrets.token_hex(12)
        await blobs().put(metro, file_blob(file_id), data)
        try:
            await finetune_commands(services).ask(FileRecord(
                org_id=principal.org_id, file_id=file_id, metro=metro,
                filename=filename[:255] or "upload.jsonl", bytes=len(data), purpose=purpose,
                examples=len(examples), sha256=hashlib.sha256(data).hexdigest(),
                created_by=principal.credential_id))
        except BaseException:
            await blobs().delete(metro, file_blob(file_id))  # not recorded: not kept
            raise
        return json_response(file_object(await own_file(services, principal, file_id)))

    @app.get("/v1/files")
    async def list_files() -> Response:
        principal: Principal = g.principal
        known_query(request.args, ("purpose", "limit", "after", "order"))
        if request.args.get("order", "desc") != "desc":
            raise InvalidRequest("`order` must be `desc` (newest first).", param="order")
        purpose = request.args.get("purpose")
        if purpose not in (None, "fine-tune"):
            return json_response(FileList(data=[]))  # Volt keeps no other kind of file
        store = ResourceStore(services.db)
        try:
            page = await store.page(FILE_KIND, principal.org_id, limit=page_limit(request.args),
                                    after=request.args.get("after") or None,
                                    states=[FILE_PROCESSED])
        except KeyError:
            raise InvalidRequest("`after` is not a file of this organization.",
                                 param="after") from None
        data = [file_object(r) for r in page.records]
        return json_response(FileList(data=data, has_more=page.has_more,
                                      first_id=data[0].id if data else None,
                                      last_id=data[-1].id if data else None))

    @app.get("/v1/files/<file_id>")
    async def get_file(file_id: str) -> Response:
        return json_response(file_object(await own_file(services, g.principal, file_id)))

    @app.get("/v1/files/<file_id>/content")
    async def file_content(file_id: str) -> Response:
        record = await own_file(services, g.principal, file_id)
        try:
            data = await blobs().get(record.spec["metro"], file_blob(file_id))
        except BlobError:
            raise NotFound(f"No file {file_id}.", param="file_id",
                           code="file_not_found") from None
        return Response(data, content_type="application/octet-stream")

    @app.delete("/v1/files/<file_id>")
    async def delete_file(file_id: str) -> Response:
        principal: Principal = g.principal
        record = await own_file(services, principal, file_id)
        await finetune_commands(services).ask(FileDelete(org_id=principal.org_id,
                                                         file_id=file_id))
        await blobs().delete(record.spec["metro"], file_blob(file_id))
        return json_response(FileDeleted(id=file_id))
