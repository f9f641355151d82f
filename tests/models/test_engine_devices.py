"""Device choice and GPU pinning, on this host: `cuda` that cannot run is an error naming what
is missing, `auto` says what it chose, a spawned job process sees its GPU before torch loads."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptserve.models import devices
from promptserve.models.devices import choose_device, pin_gpu
from promptserve.models.errors import ProviderError
from promptserve.service.jobs.starting import job_context
from tests.models.job_probe import report_job_environment

HAS_CUDA = devices.cuda_device_problem("cuda") is None


@pytest.fixture(autouse=True)
def fresh_choice() -> Iterator[None]:
    choose_device.cache_clear()
    yield
    choose_device.cache_clear()


def test_cpu_is_the_cpu() -> None:
    choice = choose_device("cpu")
    assert (choice.device, choice.providers) == ("cpu", ("CPUExecutionProvider",))


@pytest.mark.skipif(HAS_CUDA, reason="this host has a usable GPU")
def test_cuda_without_a_gpu_is_an_error_that_names_what_is_missing() -> None:
    with pytest.raises(ProviderError, match=r"PROMPTSERVE_DEVICE=cuda cannot run here: torch"):
        choose_device("cuda")


@pytest.mark.skipif(HAS_CUDA, reason="this host has a usable GPU")
def test_auto_without_a_gpu_chooses_the_cpu_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="promptserve.models.devices"):
        choice = choose_device("auto")
    assert choice.device == "cpu"
    assert "torch sees no CUDA GPU" in choice.reason
    assert "running on the CPU because CUDA is unusable" in caplog.text


def test_auto_chooses_cuda_only_when_the_provider_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_device_problem", lambda device, engine: "libcuda.so.1")
    assert choose_device("auto").device == "cpu"
    choose_device.cache_clear()
    monkeypatch.setattr(devices, "cuda_device_problem", lambda device, engine: None)
    choice = choose_device("auto")
    assert (choice.device, choice.providers[0]) == ("cuda", "CUDAExecutionProvider")


@pytest.mark.parametrize(
    ("visible", "device", "pinned"),
    [(None, "cuda:1", "1"), ("4,5", "cuda:1", "5"), ("3", "cuda", "3")],
)
def test_pin_gpu_narrows_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, device: str, pinned: str
) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert pin_gpu(device) == "cuda:0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == pinned


def test_pin_gpu_leaves_the_cpu_and_refuses_an_unlisted_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert pin_gpu("cpu") == "cpu"
    with pytest.raises(ProviderError, match="not among CUDA_VISIBLE_DEVICES"):
        pin_gpu("cuda:2")


def test_a_spawned_job_process_is_pinned_to_its_gpu_before_torch_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    context = job_context("cuda:1")  # as the job runner starts a CUDA job's process
    queue = context.Queue()
    args = (queue, str(tmp_path / "jobs.db"), str(tmp_path), "cuda:1")
    process = context.Process(target=report_job_environment, args=args)
    process.start()
    torch_loaded_first, visible = queue.get(timeout=120)
    process.join(30)
    assert process.exitcode == 0
    assert not torch_loaded_first
    assert visible == "1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the parent is untouched
