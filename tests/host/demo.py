"""Headless demo on the real host: queue every workflows/api/*.json and collect what they write.

    COMFYUI_PATH=/path/to/ComfyUI python -m tests.host.demo --out demo/host [--size 64] [--steps 2]

Uses the host tests' random SD1.5-architecture files (no downloads), so the pictures are noise; what the demo
shows is that the shipped workflows, with the example pictures the pack ships (workflows/input/), load, validate
and run end to end over the host's HTTP API.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from tests.host.assets import CHECKPOINT, CONTROLNETS, ensure_model_files
from tests.host.graphs import shrink
from tests.host.server import HostError, Server, comfyui_path, comfyui_python, make_base_dir
from tests.nodes.workflow_files import INPUT_DIR, WORKFLOWS

log = logging.getLogger("controlnet_core.demo")


def run_demo(out: Path, size: int, steps: int) -> dict[str, list[str]]:
    """{workflow: [written files]}; raises HostError naming the workflow that failed."""
    root = comfyui_path()
    if root is None:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON if needed)")
    models = ensure_model_files(root)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = make_base_dir(Path(tmp) / "base", {"checkpoints": {CHECKPOINT: models[CHECKPOINT]},
                                                  "controlnet": {n: models[n] for n in CONTROLNETS}},
                             {p.name: p for p in INPUT_DIR.glob("*.png")})
        server = Server(root=root, base=base, python=comfyui_python(root))
        try:
            server.start()
            for name, (api_path, _) in WORKFLOWS.items():
                log.info("queueing %s", api_path.name)
                try:
                    entry = server.run(shrink(json.loads(api_path.read_text()), size=size, steps=steps))
                except HostError as exc:
                    raise HostError(f"workflow {api_path.name} failed: {exc}", exc.payload) from exc
                files = []
                for node_output in entry["outputs"].values():
                    for item in node_output.get("images", []):
                        src = base / "output" / item["subfolder"] / item["filename"]
                        dst = out / f"{name}_{src.name}"
                        shutil.copyfile(src, dst)
                        files.append(str(dst))
                written[name] = files
        finally:
            server.stop()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo/host"))
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (64: affordable on a CPU)")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = run_demo(args.out, args.size, args.steps)
    except HostError as exc:
        log.error("%s", exc)
        return 1
    for name, files in written.items():
        log.info("%s: %s", name, ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
