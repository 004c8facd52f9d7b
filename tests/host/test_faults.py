"""Files changing on disk between two prompts that use them: a node error naming the file, then the next good
prompt succeeds with the same result as before (weights are read without mmap, so nothing can SIGBUS)."""
from __future__ import annotations

import logging
import shutil

import pytest
import torch

from tests.host import graphs as G
from tests.host.server import HostError

log = logging.getLogger(__name__)
FAULT = "fault_controlnet.safetensors"


def _prompt() -> dict:
    b = G.base()
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b, FAULT), b.positive, b.negative), "fault")
    return b.graph.prompt()


def _refused(server) -> dict:
    with pytest.raises(HostError) as info:
        server.run(_prompt())
    return info.value.payload


def test_controlnet_file_truncated_replaced_deleted_between_prompts(server, model_files, reference):
    folder = server.base / "models" / "controlnet"
    good = model_files[G.CANNY]
    path = folder / FAULT
    shutil.copyfile(good, path)
    before = server.run_latents(_prompt())["fault"]
    assert torch.equal(before, reference["ref_ours"])  # same weights as the canny file

    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated while the server holds it
    error = _refused(server)
    log.info("truncated file -> %s: %s", error.get("exception_type"), error.get("exception_message"))
    assert error["node_type"] == "CNCore_LoadControlNet" and FAULT in error["exception_message"]
    assert "Traceback" not in error["exception_message"]

    shutil.copyfile(model_files[G.SDXL_TINY], path)  # another family under the same name
    error = _refused(server)
    log.info("replaced by SDXL -> %s: %s", error.get("exception_type"), error.get("exception_message"))
    assert error["exception_type"].endswith("FamilyMismatchError") and "SDXL" in error["exception_message"]

    path.unlink()  # deleted: refused at queue time, naming the file
    with pytest.raises(HostError) as info:
        server.queue(_prompt())
    log.info("deleted file -> %s", str(info.value.payload)[:300])
    assert FAULT in str(info.value.payload)

    shutil.copyfile(good, path)  # the good file back: the next prompt succeeds, same result
    after = server.run_latents(_prompt())["fault"]
    assert torch.equal(after, before)
