"""Shared fixtures: real rclpy, real DDS, isolated per test process (see field_deploy.testing)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from field_deploy.testing import NodeProcess, isolate_ros_env

DOMAIN_ID = isolate_ros_env()

import pytest  # noqa: E402
import rclpy  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402

from field_deploy.ros import Spinner  # noqa: E402


@pytest.fixture(scope='session')
def ros() -> Iterator[None]:
    """rclpy's default context for the whole session (tests create nodes on it)."""
    if not rclpy.ok():
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    yield
    rclpy.try_shutdown()


@pytest.fixture
def spin(ros: None) -> Iterator[Callable[..., Spinner]]:
    """``spin(node, ...)`` spins nodes in a background thread until the test ends."""
    spinners: list[tuple[Spinner, tuple[Node, ...]]] = []

    def start(*nodes: Node) -> Spinner:
        spinner = Spinner(nodes).start()
        spinners.append((spinner, nodes))
        return spinner

    yield start
    for spinner, nodes in spinners:
        spinner.stop()
        for node in nodes:
            node.destroy_node()


@pytest.fixture
def node_process(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., NodeProcess]]:
    """``node_process('sim_robot', ['--ros-args', ...])`` runs an executable; stopped at teardown.

    A failing test prints the processes' logs.
    """
    procs: list[NodeProcess] = []

    def start(name: str, args: list[str] | tuple[str, ...] = (), **kwargs: object) -> NodeProcess:
        proc = NodeProcess(name, args, log_dir=tmp_path, **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
    report = getattr(request.node, 'rep_call', None)
    if report is not None and report.failed:
        for proc in procs:
            print(f'----- {proc.name} (pid {proc.pid}) log -----\n{proc.log()[-4000:]}')


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f'rep_{report.when}', report)
