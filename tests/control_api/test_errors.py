"""Exceptions of the packages behind the API, as the API's errors."""

from __future__ import annotations

from volt.control_api.errors import translate
from volt.finetune.blobs import BlobUnavailable


def test_a_training_data_store_that_does_not_answer_is_a_503_to_retry() -> None:
    error = translate(BlobUnavailable("the training-data store of metro fra did not answer"))
    assert error is not None
    assert error.status == 503
    assert error.headers()["Retry-After"] == "5"
    assert error.message == ("the training-data store of metro fra did not answer; nothing was "
                             "changed. Try again shortly.")
    assert translate(ValueError("x")) is None  # not a package's error: the API's own 500
