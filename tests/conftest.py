"""Where node tests run: on a real kernel with dm-crypt, inside the test VM if need be.

Every test under tests/node is marked `node`. On a host whose kernel has device-mapper and
loop devices, and inside the VM (`CRYPTVOL_IN_VM=1`), they run like any other test.
Elsewhere the VM boots once for the whole session and runs every selected node test inside
it with pytest; each node test on the host then reports the guest's result for it (from the
guest's JUnit XML), so the summary counts them one by one. When host tests are selected too,
the VM starts right after collection and runs beside them (its output is shown when the
first node test reports); alone, node tests boot it when the first one runs.

The guest's pytest output streams to the terminal and to a log file whose path is printed.
Without QEMU or the VM's parts, node tests skip on a developer's machine and fail in CI
(`CI` set), where they must never be skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import pytest
from _pytest.reports import TestReport

from cryptvol.vm import (
    IN_VM_ENV,
    VmError,
    VmUnavailable,
    dm_crypt_available,
    guest_env,
    run_in_vm,
)

NODE_DIR = Path(__file__).parent / "node"
TIMEOUT_ENV = "CRYPTVOL_NODE_TIMEOUT"
# The whole node suite in one boot; TCG on a busy 2-core host runs it in about 20 min.
DEFAULT_TIMEOUT = 3000.0
_MODE_KEY = pytest.StashKey["_NodeMode"]()


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(IN_VM_ENV) == "1":
        mode = _NodeMode(config, in_vm=False, line="node tests: running inside the test VM")
    elif dm_crypt_available():
        mode = _NodeMode(config, in_vm=False, line="node tests: on the host (it has dm-crypt)")
    else:
        mode = _NodeMode(
            config, in_vm=True, line="node tests: running inside a VM (host has no device-mapper)"
        )
    config.stash[_MODE_KEY] = mode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_node(item):
            item.add_marker(pytest.mark.node)
    if config.stash[_MODE_KEY].in_vm:
        # Host tests first: they run while the VM does, and node tests report after them.
        items.sort(key=_is_node)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    if any(_is_node(item) for item in session.items):
        mode = session.config.stash[_MODE_KEY]
        mode.announce()
        if mode.in_vm and any(not _is_node(item) for item in session.items):
            # The guest's emulated CPU and the host tests' waits (servers starting, commands
            # running) overlap: the VM runs beside the host tests instead of after them.
            mode.start_in_background(session)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    mode = item.config.stash[_MODE_KEY]
    if not mode.in_vm or not _is_node(item):
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for report in mode.reports_for(item):
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_unconfigure(config: pytest.Config) -> None:
    mode = config.stash.get(_MODE_KEY, None)
    if mode is not None:
        mode.cleanup()


def _is_node(item: pytest.Item) -> bool:
    return NODE_DIR in Path(item.path).parents


@dataclass
class _GuestResult:
    outcome: Literal["passed", "failed", "skipped"]
    when: Literal["setup", "call", "teardown"]
    text: str
    seconds: float


class _NodeMode:
    """How this session runs node tests, and (in the VM) the one guest run's results."""

    def __init__(self, config: pytest.Config, *, in_vm: bool, line: str) -> None:
        self.config = config
        self.in_vm = in_vm
        self.line = line
        self._announced = False
        self._ran = False
        self._results: dict[str, list[_GuestResult]] = {}
        self._problem: str | None = None
        self._told_problem = False
        self._skip_reason: str | None = None
        self._work: Path | None = None
        self._keep_work = False
        self._background: threading.Thread | None = None
        self._cancel = threading.Event()
        self._lines: list[str] = []  # what a background run has to say, said after it

    def announce(self) -> None:
        if not self._announced:
            self._announced = True
            self._write_line(self.line)

    def start_in_background(self, session: pytest.Session) -> None:
        self._ran = True
        self._work = Path(tempfile.mkdtemp(prefix="cryptvol-node-tests-"))
        self._write_line(
            "node tests: the VM runs beside the host tests; guest output in "
            f"{self._work / 'guest-pytest.log'}, shown once it is done"
        )
        self._background = threading.Thread(
            target=self._run_guest_in_background, args=(session,), name="node-tests-vm",
            daemon=True)
        self._background.start()

    def _run_guest_in_background(self, session: pytest.Session) -> None:
        try:
            self._run_guest(session, stream=False)
        except Exception as exc:  # a thread's exception would be lost: every node test says it
            self._problem = f"the VM run failed: {type(exc).__name__}: {exc}"

    def _wait_for_background(self) -> None:
        thread, self._background = self._background, None
        if thread is None:
            return
        thread.join()
        assert self._work is not None
        capman = self.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled():
            sys.stdout.buffer.write((self._work / "guest-pytest.log").read_bytes())
            sys.stdout.flush()
        for line in self._lines:
            self._write_line(line)

    def reports_for(self, item: pytest.Item) -> list[TestReport]:
        self._wait_for_background()
        if not self._ran:
            self._ran = True
            self._run_guest(item.session)
        if self._skip_reason is not None:
            return [_report(item, "setup", "skipped", _skip_repr(item, self._skip_reason))]
        results = self._results.get(_junit_key(item.nodeid))
        if not results:
            self._keep_work = True
            why = self._problem or "the guest's pytest did not report this test"
            if self._problem is not None and self._told_problem:
                why = f"{why.splitlines()[0]} (details on the first node test)"
            self._told_problem = self._problem is not None
            return [_report(item, "setup", "failed", f"not run in the VM: {why}")]
        reports = []
        for r in results:
            longrepr: Any = _skip_repr(item, r.text) if r.outcome == "skipped" else r.text or None
            reports.append(_report(item, r.when, r.outcome, longrepr, r.seconds))
        return reports

    def cleanup(self) -> None:
        thread = self._background
        if thread is not None:  # the session ended before any node test was reported
            self._cancel.set()
            thread.join()
        if self._work is not None and not self._keep_work:
            shutil.rmtree(self._work, ignore_errors=True)

    def _run_guest(self, session: pytest.Session, stream: bool = True) -> None:
        """Boot the VM and run every node test in it. `stream`: the guest's output also goes
        to the terminal as it comes; without it (a background run) only to the log, and
        what this says is kept for the main thread to write."""
        nodeids = [i.nodeid for i in session.items if _is_node(i)]
        if self._work is None:
            self._work = Path(tempfile.mkdtemp(prefix="cryptvol-node-tests-"))
        say = self._write_line if stream else self._lines.append
        junit = self._work / "junit.xml"
        log_path = self._work / "guest-pytest.log"
        argv = [
            sys.executable,
            "-m",
            "pytest",
            *nodeids,
            "-p",
            "no:cacheprovider",
            "-v",
            "-rfEs",
            "--durations=10",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit2",
            "--rootdir",
            str(self.config.rootpath),
        ]
        env = {
            IN_VM_ENV: "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "100",
            "PATH": f"{Path(sys.executable).parent}:{guest_env()['PATH']}",
        }
        if os.environ.get("CI"):
            env["CI"] = os.environ["CI"]
        timeout = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
        say(
            f"node tests: booting the VM for {len(nodeids)} node test(s); "
            f"guest output also in {log_path}"
        )
        started = time.monotonic()
        capman = self.config.pluginmanager.getplugin("capturemanager")
        quiet = capman.global_and_fixture_disabled() if stream else contextlib.nullcontext()
        with open(log_path, "wb") as log, quiet:
            tee = _Tee(log, sys.stdout.buffer) if stream else _Tee(log)
            try:
                code = run_in_vm(
                    argv,
                    cwd=str(self.config.rootpath),
                    env=env,
                    timeout=timeout,
                    work_dir=self._work,
                    output=tee,
                    error_output=tee,
                    cancel=self._cancel,
                )
            except VmUnavailable as exc:
                if os.environ.get("CI"):
                    self._problem = f"the VM cannot run here, and CI must not skip: {exc}"
                else:
                    self._skip_reason = f"no VM to run node tests in: {exc}"
                return
            except VmError as exc:
                self._problem = str(exc)
                return
            finally:
                if stream:
                    sys.stdout.flush()
        say(
            f"node tests: the VM finished in {time.monotonic() - started:.1f} s "
            f"(guest pytest exit code {code})"
        )
        try:
            self._results = _parse_junit(junit)
        except (OSError, ET.ParseError) as exc:
            self._problem = (
                f"the guest's pytest exited with {code} and left no readable {junit.name} "
                f"({exc}); see {log_path}"
            )
        if code not in (0, 1) and not self._problem:
            self._problem = f"the guest's pytest exited with {code}; see {log_path}"
        if code != 0:
            self._keep_work = True

    def _write_line(self, line: str) -> None:
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(line, bold=True)
        else:
            print(line, file=sys.stderr)


class _Tee:
    def __init__(self, *sinks: IO[bytes]) -> None:
        self._sinks = sinks

    def write(self, data: bytes) -> int:
        for sink in self._sinks:
            sink.write(data)
        return len(data)

    def flush(self) -> None:
        for sink in self._sinks:
            sink.flush()


def _parse_junit(path: Path) -> dict[str, list[_GuestResult]]:
    results: dict[str, list[_GuestResult]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = f"{case.get('classname', '')}::{case.get('name', '')}"
        seconds = float(case.get("time") or 0)
        found: list[_GuestResult] = []
        for child in case:
            text = _element_text(child)
            if child.tag == "failure":
                found.append(_GuestResult("failed", "call", text, seconds))
            elif child.tag == "error":
                message = child.get("message", "")
                when: Literal["setup", "teardown"] = (
                    "teardown" if "teardown" in message else "setup"
                )
                found.append(_GuestResult("failed", when, text, seconds))
            elif child.tag == "skipped":
                reason = child.get("message") or text
                found.append(
                    _GuestResult("skipped", "setup" if not found else "call", reason, seconds)
                )
        if not any(r.outcome != "passed" and r.when in ("setup", "call") for r in found):
            found.insert(0, _GuestResult("passed", "call", "", seconds))
        results.setdefault(key, []).extend(found)
    return results


def _element_text(element: ET.Element) -> str:
    message = element.get("message", "")
    body = (element.text or "").strip()
    return body if body else message


def _junit_key(nodeid: str) -> str:
    """The classname::name pytest's junitxml writes for `nodeid` (see mangle_test_address)."""
    path, *names = nodeid.split("::")
    dotted = path.replace("/", ".")
    dotted = dotted[: -len(".py")] if dotted.endswith(".py") else dotted
    parts = [dotted, *names]
    return f"{'.'.join(parts[:-1])}::{parts[-1]}"


def _skip_repr(item: pytest.Item, reason: str) -> tuple[str, int, str]:
    path, lineno, _ = item.location
    return (path, (lineno or 0) + 1, f"Skipped: {reason}")


def _report(
    item: pytest.Item,
    when: Literal["setup", "call", "teardown"],
    outcome: Literal["passed", "failed", "skipped"],
    longrepr: Any,
    seconds: float = 0.0,
) -> TestReport:
    now = time.time()
    return TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords={name: 1 for name in item.keywords},
        outcome=outcome,
        longrepr=longrepr,
        when=when,
        duration=seconds,
        start=now,
        stop=now,
    )
