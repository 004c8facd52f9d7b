"""Our node schemas read statically from nodes/*.py (the host's comfy_api is not needed, nor imported).

`io.Schema(...)` calls are parsed with `ast`; literal arguments are evaluated, names that the node modules import
from controlnet_core (or define as module-level literals) are resolved by importing the pack the way the host
does (`load_pack`), which imports nothing from the host. The result mirrors the host's object_info layout
({"input": {"required": {...}, "optional": {...}}, "input_order": ..., "output": [...]}), so workflow checks can
use one reader for ours and the host's nodes.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODES_DIR = REPO / "nodes"
PACK = "controlnet_core_pack"  # the name the tests import the repository root under (the host mangles a path)
IO_TYPES = {"Float": "FLOAT", "Int": "INT", "String": "STRING", "Boolean": "BOOLEAN", "Combo": "COMBO",
            "Image": "IMAGE", "Mask": "MASK", "Conditioning": "CONDITIONING", "ControlNet": "CONTROL_NET",
            "Vae": "VAE", "Model": "MODEL", "Latent": "LATENT"}
PURE_MODULES = {"inputs": "nodes.inputs"}  # node modules that import no host module (importable here)
UNKNOWN = object()  # a value only the host can compute (e.g. the files of the controlnet folder)


def load_pack():
    """Import the repository root as a package, as the host's custom-node loader does (no host modules)."""
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK]


def pack_module(name: str):
    """A module of the pack by its dotted name inside the repository, e.g. "nodes.inputs" (host-free ones only)."""
    load_pack()
    return importlib.import_module(f"{PACK}.{name}")


class _Module:
    """One node module: its literals, its controlnet_core imports and its custom io types."""

    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.names: dict[str, object] = {}
        self.custom: dict[str, str] = {}
        for stmt in self.tree.body:
            if isinstance(stmt, ast.ImportFrom) and stmt.level and stmt.module in PURE_MODULES:
                module = importlib.import_module(f"{PACK}.{PURE_MODULES[stmt.module]}")
                for alias in stmt.names:
                    self.names[alias.asname or alias.name] = getattr(module, alias.name)
            elif isinstance(stmt, ast.ImportFrom) and stmt.level == 2 and stmt.module.startswith("controlnet_core"):
                module = importlib.import_module(f"{PACK}.{stmt.module}")
                for alias in stmt.names:
                    self.names[alias.asname or alias.name] = getattr(module, alias.name)
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                target = stmt.targets[0].id
                value = stmt.value
                if (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
                        and value.func.attr == "Custom"):
                    self.custom[target] = ast.literal_eval(value.args[0])
                else:
                    try:
                        self.names[target] = ast.literal_eval(value)
                    except ValueError:
                        pass

    def value(self, node: ast.AST):
        """Literal, module-level name, `list(name)` or a constant f-string; UNKNOWN otherwise."""
        try:
            return ast.literal_eval(node)
        except ValueError:
            pass
        if isinstance(node, ast.Name) and node.id in self.names:
            return self.names[node.id]
        if isinstance(node, ast.Attribute):
            owner = self.value(node.value)
            return UNKNOWN if owner is UNKNOWN else getattr(owner, node.attr, UNKNOWN)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "list" and node.args:
            inner = self.value(node.args[0])
            return UNKNOWN if inner is UNKNOWN else list(inner)
        if isinstance(node, ast.JoinedStr):
            return "<formatted>"
        return UNKNOWN


def _io_type(call: ast.Call, module: _Module) -> str:
    """`io.Float.Input(...)` -> FLOAT; `ControlStrengthType.Input(...)` -> its io.Custom name."""
    owner = call.func.value  # io.Float  or  ControlStrengthType
    if isinstance(owner, ast.Attribute):
        return IO_TYPES[owner.attr]
    if isinstance(owner, ast.Name):
        if owner.id in module.custom:
            return module.custom[owner.id]
        for other in all_modules().values():
            if owner.id in other.custom:
                return other.custom[owner.id]
    raise ValueError(f"{module.path.name}: unrecognised io type in {ast.unparse(call)}")


def _input(call: ast.Call, module: _Module) -> tuple[str, list, bool]:
    kwargs = {k.arg: module.value(k.value) for k in call.keywords}
    name = module.value(call.args[0])
    io_type = _io_type(call, module)
    options = {k: v for k, v in kwargs.items() if k not in ("optional",)}
    if io_type == "COMBO":
        options.setdefault("options", UNKNOWN)
    return name, [io_type, options], bool(kwargs.get("optional", False))


def _dynamic_inputs(starred: ast.Starred) -> list[tuple[str, list, bool]]:
    """The Preprocessor's registry-driven widgets, from the pure nodes/options.py (no host)."""
    options = importlib.import_module(f"{PACK}.nodes.inputs")
    kinds = {"int": "INT", "float": "FLOAT", "bool": "BOOLEAN", "choice": "COMBO", "mask": "MASK"}
    out = []
    for input_name, _owner, option in options.preprocessor_widgets():
        spec = {"default": option.default, "tooltip": option.tooltip}
        if option.kind == "choice":
            spec["options"] = list(option.choices)
        if option.kind in ("int", "float"):
            spec.update(min=option.min, max=option.max, step=option.step)
        out.append((input_name, [kinds[option.kind], spec], True))
    return out


def _schema(call: ast.Call, module: _Module) -> dict:
    kwargs = {k.arg: k.value for k in call.keywords}
    required, optional, order = {}, {}, {"required": [], "optional": []}
    for element in kwargs["inputs"].elts:
        items = _dynamic_inputs(element) if isinstance(element, ast.Starred) else [_input(element, module)]
        for name, spec, is_optional in items:
            group = "optional" if is_optional else "required"
            (optional if is_optional else required)[name] = spec
            order[group].append(name)
    outputs = []
    for out in kwargs["outputs"].elts:
        out_kwargs = {k.arg: module.value(k.value) for k in out.keywords}
        outputs.append((_io_type(out, module), out_kwargs.get("display_name"), out_kwargs.get("tooltip")))
    return {"name": module.value(kwargs["node_id"]), "display_name": module.value(kwargs["display_name"]),
            "category": module.value(kwargs["category"]), "description": module.value(kwargs["description"]),
            "input": {"required": required, "optional": optional}, "input_order": order,
            "output": [o[0] for o in outputs], "output_name": [o[1] for o in outputs],
            "output_tooltips": [o[2] for o in outputs], "file": module.path.name}


@cache
def all_modules() -> dict[str, _Module]:
    load_pack()
    return {p.name: _Module(p) for p in sorted(NODES_DIR.glob("*.py"))}


@cache
def schemas() -> dict[str, dict]:
    """{node_id: object_info-like dict} for every io.Schema declared in nodes/*.py."""
    out = {}
    for module in all_modules().values():
        for node in ast.walk(module.tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Schema"):
                schema = _schema(node, module)
                out[schema["name"]] = schema
    return out
