"""Files changing on disk between two prompts that use them: a node error naming the file, then the next good
prompt succeeds with the same result as before (weights are read without mmap, so nothing can SIGBUS)."""
from __future__ import annotations

import json
import logging
import re
import shutil
import time
import urllib.request

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
    shutil.copyfile(good, path)  # a copy, not a link: it is truncated in place below
    try:
        _truncate_replace_delete(server, model_files, good, path, reference)
    finally:
        path.unlink(missing_ok=True)  # ~700 MB: not left in the base dir (CI disk)


def _truncate_replace_delete(server, model_files, good, path, reference) -> None:
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


# ------------------------------------------------------------------------------------ interrupt in mid-sampling
INTERRUPT_STEPS = 24  # long enough to be caught in the middle, short enough for CI (64x64 latent)


def _sampling_prompt(sampler: str = "KSampler", prefix: str = "intr") -> dict:
    """Ours applied, sampled for INTERRUPT_STEPS steps by KSampler or the equivalent KSamplerAdvanced (same
    math, another node: the host's cache cannot hand one's result to the other)."""
    b = G.base()
    positive, negative = G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b), b.positive, b.negative)
    common = {"model": b.model, "steps": INTERRUPT_STEPS, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
              "positive": positive, "negative": negative, "latent_image": b.latent}
    if sampler == "KSampler":
        k = b.graph.add("KSampler", seed=42, denoise=1.0, **common)
    else:
        k = b.graph.add("KSamplerAdvanced", add_noise="enable", noise_seed=42, start_at_step=0, end_at_step=10000,
                        return_with_leftover_noise="disable", **common)
    b.graph.add("SaveLatent", samples=b.graph.out(k), filename_prefix=prefix)
    return b.graph.prompt()


def _wait_for_step(server, start: int, timeout: float = 600.0) -> str:
    """Block until the host's progress bar (in its log after byte `start`) shows a step done but not the last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(server.log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        done = [int(m) for m in re.findall(rf"(\d+)/{INTERRUPT_STEPS} \[", text)]
        if any(0 < d < INTERRUPT_STEPS for d in done):
            return f"step {max(done)}/{INTERRUPT_STEPS}"
        time.sleep(0.05)
    raise AssertionError(f"sampling did not start within {timeout:.0f} s:\n{server.log_tail()}")


def _interrupt(server) -> None:
    """POST /interrupt (the host answers 200 with an empty body, so not through `server.post`)."""
    request = urllib.request.Request(server.url + "/interrupt", data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200


def test_interrupt_in_mid_sampling_then_the_same_prompt_is_unchanged(server, reference):
    start = server.log_path.stat().st_size
    prompt_id = server.queue(_sampling_prompt())
    at = _wait_for_step(server, start)
    _interrupt(server)
    with pytest.raises(HostError):
        server.wait(prompt_id)
    status = server.get(f"/history/{prompt_id}")[prompt_id]["status"]
    events = [m[0] for m in status["messages"]]
    log.info("interrupt at %s -> status %s, events %s", at, status["status_str"], events)
    assert "execution_interrupted" in events and "execution_error" not in events

    again = server.run_latents(_sampling_prompt())["intr"]  # the same prompt: samples again from the start
    fresh = server.run_latents(_sampling_prompt("KSamplerAdvanced"))["intr"]  # an uninterrupted sampling
    assert torch.isfinite(again).all() and torch.equal(again, fresh)


# ------------------------------------------------------------------- a preprocessor model folder half deleted

def _segment_prompt(resolution: int) -> dict:
    g = G.Graph()
    image = g.add("LoadImage", image=G.HINT_IMAGE)
    hint = g.add("CNCore_Preprocessor", image=g.out(image), preprocessor="segmentation", resolution=resolution)
    g.add("PreviewImage", images=g.out(hint))
    return g.prompt()


def test_preprocessor_model_folder_missing_its_weights_between_prompts(server):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    config = transformers.SegformerConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 8, 8],
                                          num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=8, num_labels=150)
    folder = server.base / "models" / "controlnet_preprocessors" / "segmentation"
    folder.mkdir(parents=True)
    try:
        transformers.SegformerForSemanticSegmentation(config).save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps(
            {"do_resize": True, "size": {"height": 32, "width": 32}, "do_normalize": True,
             "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2}))
        assert server.run(_segment_prompt(64))["status"]["status_str"] == "success"

        weights = folder / "model.safetensors"
        kept = weights.read_bytes()
        weights.unlink()  # half the folder: config files without the weights
        with pytest.raises(HostError) as info:
            server.run(_segment_prompt(48))
        error = info.value.payload
        log.info("segmentation folder without its weights -> %s: %s: %s", error.get("node_type"),
                 error.get("exception_type"), error.get("exception_message"))
        assert error["node_type"] == "CNCore_Preprocessor" and "Traceback" not in error["exception_message"]
        assert str(folder) in error["exception_message"] and "lacks model.safetensors" in error["exception_message"]

        weights.write_bytes(kept)  # the folder whole again: the next good prompt succeeds
        assert server.run(_segment_prompt(40))["status"]["status_str"] == "success"
    finally:
        shutil.rmtree(folder)  # test_preprocessor expects no segmentation model


# ------------------------------------------------------------------------ hint features cached across prompts
ENCODED = "hint encoded:"  # controlnet_core/engine.py logs each hint-encoder pass (a cache miss)


def _hinted_prompt(seed: int, image: str = G.HINT_IMAGE) -> dict:
    b = G.base(image=image)
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b), b.positive, b.negative, strength=0.9),
             "hintcache", seed=seed)  # strength 0.9: no other test's Apply, so the first prompt encodes afresh
    return b.graph.prompt()


def _encodes(server, prompt: dict) -> tuple[int, torch.Tensor]:
    """(hint-encoder passes logged while the prompt ran, its latent)."""
    start = server.log_path.stat().st_size
    out = server.run_latents(prompt)["hintcache"]
    with open(server.log_path, "rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace").count(ENCODED), out


def test_hint_features_are_reused_across_prompts_until_the_hint_changes(server):
    first, a = _encodes(server, _hinted_prompt(seed=1))
    reseeded, b = _encodes(server, _hinted_prompt(seed=2))  # only the seed differs: the Apply output is cached
    other_hint, _ = _encodes(server, _hinted_prompt(seed=2, image="controlnet_core_example_b.png"))
    log.info("hint-encoder passes: first prompt %d, seed changed %d, hint image changed %d",
             first, reseeded, other_hint)
    assert not torch.equal(a, b)  # the second prompt did sample again
    assert (first, reseeded, other_hint) == (1, 0, 1)


# ------------------------------------------------------------- a preprocessor's .pth replaced between prompts

def test_preprocessor_pth_replaced_then_truncated_between_prompts(server, inputs):
    """HED's ControlNetHED.pth (a torch zip file, read without mmap): replaced in place by other weights, the next
    prompt uses them, even when the prompt is identical (the node fingerprints its weight files, so the host does not
    answer from its cache); truncated, a node error naming the file; whole again, the next prompt succeeds."""
    from tests.host.test_learned import _close, _expected
    from tests.host.test_preprocessor import _preprocess, _saved_images
    from tests.learned_nets import random_weights, save_upstream
    from tests.nodes.schemas import pack_module

    hed = pack_module("controlnet_core.preprocess.nets.hed").HED
    preprocess = pack_module("controlnet_core.preprocess")
    folder = server.base / "models" / "controlnet_preprocessors" / "softedge"
    path = folder / hed.files[0]

    def hint(resolution: int):  # one prompt per resolution; 72 runs twice, identical, around a replacement
        entry = server.run(_preprocess(G.HINT_IMAGE, "hed", f"pth_{resolution}", resolution=resolution))
        return _saved_images(server, entry)[0]

    def expected(resolution: int):
        return _expected(preprocess, inputs, "hed", path, resolution=resolution)

    try:
        save_upstream(hed, random_weights(hed, seed=0), folder)
        assert _close(hint(64), expected(64))
        old = expected(72)
        save_upstream(hed, random_weights(hed, seed=1), folder)  # torch.save over the same file (same inode)
        new = expected(72)
        second = hint(72)
        assert _close(second, new) and not _close(second, old) and second.std() > 0
        save_upstream(hed, random_weights(hed, seed=2), folder)  # the same prompt again: the fingerprint changed
        third = hint(72)
        assert _close(third, expected(72)) and not _close(third, second)

        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(HostError) as info:
            hint(80)
        error = info.value.payload
        log.info("truncated .pth -> %s: %s: %s", error.get("node_type"), error.get("exception_type"),
                 error.get("exception_message"))
        assert error["node_type"] == "CNCore_Preprocessor" and str(path) in error["exception_message"]
        assert "Traceback" not in error["exception_message"]

        path.write_bytes(data)  # whole again: the next prompt succeeds with the second weights
        assert _close(hint(88), expected(88))
    finally:
        path.unlink(missing_ok=True)
