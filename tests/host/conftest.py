"""Host test set-up: random SD1.5-architecture files, a base directory, one real ComfyUI server per session.

Runs only when COMFYUI_PATH names a ComfyUI checkout; otherwise every test here is skipped with that reason.
`make test-host` sets CONTROLNET_CORE_REQUIRE_HOST=1: then a missing host, or any skipped host test, fails the run
(CI must never pass because the host tests did not run).
Model files are cached in `.host/models` (git-ignored; override with CONTROLNET_CORE_HOST_CACHE) because the
random SD1.5 checkpoint is ~2 GB.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.host.assets import ALIASES, CHECKPOINT, CONTROLNETS, NOT_A_CONTROLNET, ensure_model_files, write_inputs
from tests.host.server import Server, comfyui_path, comfyui_python, make_base_dir

REQUIRE_HOST = os.environ.get("CONTROLNET_CORE_REQUIRE_HOST") == "1"
_skipped: list[str] = []


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.host)


def pytest_runtest_logreport(report):
    if REQUIRE_HOST and report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """Under CONTROLNET_CORE_REQUIRE_HOST=1 a skipped host test is a failure, not a pass."""
    if REQUIRE_HOST and _skipped:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"FAILED: {len(_skipped)} host tests were skipped with CONTROLNET_CORE_REQUIRE_HOST=1: {_skipped[:5]}",
            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def comfyui() -> Path:
    root = comfyui_path()
    if root is None:
        if REQUIRE_HOST:
            pytest.fail("CONTROLNET_CORE_REQUIRE_HOST=1 but COMFYUI_PATH is not set: point it at a ComfyUI checkout")
        pytest.skip("host tests need a ComfyUI checkout: set COMFYUI_PATH=/path/to/ComfyUI (and COMFYUI_PYTHON if "
                    "its interpreter is not in a venv next to it)")
    if not (root / "main.py").exists():
        pytest.fail(f"COMFYUI_PATH={root} has no main.py: point it at a ComfyUI checkout")
    return root


@pytest.fixture(scope="session")
def model_files(comfyui) -> dict[str, Path]:
    """{name: cached file}: the random SD1.5 checkpoint (made by the host's python) and the ControlNets."""
    return ensure_model_files(comfyui)


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="session")
def server(comfyui, model_files, inputs, tmp_path_factory):
    """A running host with this pack in custom_nodes; killed at the end of the session, whatever happens."""
    base = make_base_dir(tmp_path_factory.mktemp("comfy_base"),
                         {"checkpoints": {CHECKPOINT: model_files[CHECKPOINT]},
                          "controlnet": {n: model_files[n] for n in (*CONTROLNETS, *ALIASES, NOT_A_CONTROLNET)}},
                         inputs)
    host = Server(root=comfyui, base=base, python=comfyui_python(comfyui))
    try:
        host.start()
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="session")
def reference(server) -> dict:
    """{"ref_none", "ref_native", "ref_ours"} latents shared by the parity and control tests."""
    from tests.host.graphs import reference_prompt

    return server.run_latents(reference_prompt())


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: the 50-prompt host soak (tests/host/test_soak.py); `make soak` runs "
                                       "it, `make test-host` leaves it out (-m 'not soak')")
