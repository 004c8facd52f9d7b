"""Hostile or malformed API input through POST /prompt: each is a node error at queue time (no crash, no
traceback in the answer), and the server serves the next prompt. Every case is refused before sampling."""
from __future__ import annotations

import json
import logging

import pytest

from tests.host import graphs as G
from tests.host.server import HostError

log = logging.getLogger(__name__)


def _apply_prompt(name: str = G.CANNY, **apply_inputs) -> tuple[dict, str]:
    b = G.base()
    loader = b.graph.add("CNCore_LoadControlNet", control_net_name=name)
    values = dict(strength=1.0, start=0.0, end=1.0) | apply_inputs
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", b.graph.out(loader), b.positive, b.negative, **values), "bad")
    return b.graph.prompt(), loader


def _strength_prompt(**options) -> dict:
    b = G.base()
    weights = G.control_strength(b, "Balanced", **options)
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b), b.positive, b.negative,
                         control_strength=weights), "bad")
    return b.graph.prompt()


def _preprocessor_prompt(**inputs) -> dict:
    b = G.base()
    node = b.graph.add("CNCore_Preprocessor", image=b.hint, preprocessor="canny", **inputs)
    b.graph.add("PreviewImage", images=b.graph.out(node))
    return b.graph.prompt()


CASES = {  # name -> (prompt builder, what the refusal must mention)
    "name with ..": (lambda: _apply_prompt("../../../etc/passwd")[0], "is not a file of the host's models/controlnet"),
    "absolute name": (lambda: _apply_prompt("/etc/passwd")[0], "is not a file of the host's models/controlnet"),
    "strength NaN": (lambda: _apply_prompt(strength=float("nan"))[0], "strength nan"),
    "strength inf": (lambda: _apply_prompt(strength=float("inf"))[0], "strength inf"),
    "strength negative": (lambda: _apply_prompt(strength=-1.0)[0], "strength -1.0"),
    "strength 1e30": (lambda: _apply_prompt(strength=1e30)[0], "strength 1e+30"),
    "strength wrong type": (lambda: _apply_prompt(strength="strong")[0], "strength"),
    "start after end": (lambda: _apply_prompt(start=0.8, end=0.2)[0], "start_percent 0.8 is after end_percent 0.2"),
    "malformed schedule": (lambda: _strength_prompt(schedule="linear:1,abc"), "schedule"),
    "malformed block list": (lambda: _strength_prompt(block_multipliers="1, one, 1"), "block_multipliers"),
    "10 MB schedule": (lambda: _strength_prompt(schedule="x" * 10_000_000), "schedule"),
    "resolution 100000": (lambda: _preprocessor_prompt(resolution=100000), "resolution"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_node_error_and_the_server_serves_on(server, reference, case):
    build, mention = CASES[case]
    with pytest.raises(HostError) as info:
        server.queue(build())
    payload = info.value.payload
    text = json.dumps(payload)
    log.info("bad input %r -> %s", case, text[:300])
    assert payload.get("node_errors"), text[:2000]  # refused at queue time, by node
    assert "Traceback" not in text and mention.lower() in text.lower(), text[:2000]
    assert server.run(G.reference_prompt())["status"]["status_str"] == "success"  # still serving
