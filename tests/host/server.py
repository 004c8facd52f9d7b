"""A real ComfyUI server in a subprocess, driven over loopback HTTP (comfyui_native.md §7 "Own tests").

The host runs from its own checkout (`COMFYUI_PATH`) with its own interpreter (`COMFYUI_PYTHON`, default: the
python of a venv next to the checkout), a throw-away base directory whose `custom_nodes/` holds a symlink to this
repository, and only 127.0.0.1. Every wait is bounded; `stop()` always kills the process.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "controlnet-core"  # the folder ComfyUI-Manager would make (the project name)


class HostError(RuntimeError):
    """The host refused a prompt, failed while running it, or did not answer in time."""

    def __init__(self, message: str, payload: dict | None = None):
        super().__init__(message)
        self.payload = payload or {}


def comfyui_path() -> Path | None:
    """The host checkout named by COMFYUI_PATH, or None when unset."""
    value = os.environ.get("COMFYUI_PATH")
    return Path(value).resolve() if value else None


def comfyui_python(root: Path) -> str:
    """COMFYUI_PYTHON, else a venv's python next to or inside the checkout, else python3."""
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    for candidate in (root.parent / "venv", root.parent / ".venv", root / "venv", root / ".venv"):
        if (candidate / "bin" / "python").exists():
            return str(candidate / "bin" / "python")
    return shutil.which("python3") or "python3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EXTRA_MODEL_PATHS = "extra_model_paths.yaml"  # in the base dir; `Server.start` passes it to the host


def kind_folder_file(src: Path, folder: str, name: str) -> Path:
    """`src` hard-linked as `<its folder>/<folder>/<name>` (same file system: no disk used; a copy where links are
    not possible): the cached files of one model kind in a folder of their own, which the host can list as a model
    folder of that kind under the same names (the pack refuses a symlink leading out of the model folders)."""
    src = src.resolve()
    dst = src.parent / folder / name
    if dst.exists() and os.path.samefile(src, dst):
        return dst
    dst.parent.mkdir(exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def make_base_dir(base: Path, models: dict[str, dict[str, Path]], inputs: dict[str, Path]) -> Path:
    """Lay out BASE/{custom_nodes,models/<folder>,input,output} with symlinks to the pack and the files. The
    cached files a symlink points to are registered as folders of their kind (BASE/extra_model_paths.yaml), as a
    user with models on another disk does."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    extra: dict[str, set[str]] = {}
    for folder, files in models.items():
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        for name, src in files.items():
            dst = base / "models" / folder / name
            if not dst.exists():
                target = kind_folder_file(src, folder, name)
                dst.symlink_to(target)
                extra.setdefault(folder, set()).add(str(target.parent))
    if extra:
        lines = ["controlnet_core_test_cache:"]  # JSON strings are YAML; the host splits a value on newlines
        lines += [f"  {folder}: {json.dumps(chr(10).join(sorted(dirs)))}" for folder, dirs in extra.items()]
        (base / EXTRA_MODEL_PATHS).write_text("\n".join(lines) + "\n")
    (base / "input").mkdir(exist_ok=True)
    for name, src in inputs.items():
        shutil.copyfile(src, base / "input" / name)
    (base / "output").mkdir(exist_ok=True)
    return base


@dataclass
class Server:
    """One running host; use `start()` / `stop()` (or the pytest fixture that does both)."""

    root: Path
    base: Path
    python: str
    port: int = 0
    proc: subprocess.Popen | None = None
    extra_args: tuple[str, ...] = ()  # more host flags, e.g. ("--front-end-root", DIR) for the browser tests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base / "host.log"

    def start(self, timeout: float = 300.0) -> "Server":
        self.port = self.port or free_port()
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-auto-launch", "--disable-api-nodes",
               "--database-url", "sqlite:///:memory:", "--log-stdout", *self.extra_args]
        if (self.base / EXTRA_MODEL_PATHS).exists():
            cmd += ["--extra-model-paths-config", str(self.base / EXTRA_MODEL_PATHS)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HostError(f"the host exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1.0)
        self.stop()
        raise HostError(f"the host did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 30.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict, timeout: float = 30.0):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
            raise HostError(f"POST {path} answered {e.code}: {json.dumps(body)[:2000]}", body) from None

    def queue(self, prompt: dict) -> str:
        """POST /prompt; returns the prompt id. A validation failure raises HostError with `node_errors`."""
        reply = self.post("/prompt", {"prompt": prompt, "client_id": "controlnet-core-tests",
                                      "prompt_id": str(uuid.uuid4())})
        return reply["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 1800.0) -> dict:
        """History entry of a finished prompt; HostError carrying the execution_error when it failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise HostError(f"the host died while running {prompt_id}:\n{self.log_tail()}")
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") == "error":
                    error = next((m[1] for m in status.get("messages", []) if m[0] == "execution_error"), {})
                    raise HostError(f"{error.get('node_type')}: {error.get('exception_type')}: "
                                    f"{error.get('exception_message')}", error)
                return entry
            time.sleep(0.5)
        raise HostError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 1800.0) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def latents(self, entry: dict) -> dict[str, torch.Tensor]:
        """{filename_prefix: latent} for every SaveLatent of a finished prompt (fp32, (B, 4, h, w))."""
        out = {}
        for node_output in entry["outputs"].values():
            for item in node_output.get("latents", []):
                path = self.base / "output" / item["subfolder"] / item["filename"]
                prefix = item["filename"].rsplit("_", 2)[0]
                out[prefix] = load_file(str(path))["latent_tensor"].float()
        return out

    def run_latents(self, prompt: dict, timeout: float = 1800.0) -> dict[str, torch.Tensor]:
        return self.latents(self.run(prompt, timeout))
