import grpc
import pytest

from cryptvol import errors
from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.csi.server import SECRET_FIELDS
from cryptvol.rpc.interceptor import REDACTED, redacted
from cryptvol.rpc.status import code_for, error_for, message_for


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
        (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Aborted, grpc.StatusCode.ABORTED),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
        (errors.Internal, grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_maps_to_its_grpc_code_and_back(error, code):
    assert code_for(error("x")) == code
    assert message_for(error("what to do")) == "what to do"
    back = error_for(code, "what to do")
    assert type(back) is error and str(back) == "what to do"


def test_an_unexpected_exception_shows_only_its_type():
    message = message_for(ValueError("key=deadbeef"))
    assert "deadbeef" not in message
    assert "ValueError" in message


def test_request_secrets_are_redacted_for_logging_and_the_request_is_untouched():
    request = pb.NodeStageVolumeRequest(volume_id="v", secrets={"passphrase": "hunter2"})
    shown = redacted(request, SECRET_FIELDS)
    assert shown.secrets["passphrase"] == REDACTED
    assert "hunter2" not in str(shown)
    assert request.secrets["passphrase"] == "hunter2"


def test_a_request_without_secrets_is_logged_as_is():
    request = pb.DeleteVolumeRequest(volume_id="v")
    assert redacted(request, SECRET_FIELDS) == request
