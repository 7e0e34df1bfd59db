"""Kill the driver at each step of an operation in turn, and retry until it converges."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from cryptvol.csi.client import CsiClient
from support.driver import RunningDriver

Step = tuple[Callable[[CsiClient], object], Sequence[str]]


def kill_at_each_point(driver: RunningDriver, steps: Sequence[Step]) -> CsiClient:
    """Run each step with the failpoints after it armed. A step dies at its next point (the
    first one of its points still armed), the driver restarts without that point, and the
    step is retried, the way an orchestrator retries, until it succeeds. Returns the last
    client; the driver runs with no failpoint armed at the end."""
    armed = [point for _, points in steps for point in points]
    assert len(set(armed)) == len(armed), "a point armed twice kills the retry of its step"
    csi = driver.restart(failpoints=",".join(armed))
    for call, points in steps:
        for point in points:
            try:
                call(csi)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, (point, exc.details())
            else:
                raise AssertionError(f"the driver was not killed at {point}")
            assert driver.wait_killed() == -9, point
            armed.remove(point)
            csi = driver.restart(failpoints=",".join(armed))
        call(csi)
    return csi
