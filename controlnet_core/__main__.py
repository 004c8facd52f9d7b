"""Command line: `python -m controlnet_core {inspect,convert,preprocess,demo}` (see docs/formats.md)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from .errors import ControlNetError

logger = logging.getLogger("controlnet_core")

PREPROCESS_HELP = "make a hint image from a picture (canny, depth, ...); see `preprocess --help`"


def _inspect(args: argparse.Namespace) -> int:
    """Print kind, family, layout, variant, dtype, parameters and the residuals of a control file."""
    from .formats import inspect_checkpoint

    info = inspect_checkpoint(args.file).as_dict()
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    rows = [("file", info["path"]), ("kind", info["kind"]), ("family", info["family"]), ("format", info["format"]),
            ("variant", info["variant"]), ("dtype", info["dtype"]), ("parameters", f"{info['parameters']:,}"),
            ("context_dim", info["context_dim"]), ("hint_channels", info["hint_channels"]),
            ("residuals", f"{info['residuals']}: " + " ".join(map(str, info["residual_channels"])))]
    sys.stdout.write("".join(f"{name:<14}{value}\n" for name, value in rows))
    return 0


def _convert(args: argparse.Namespace) -> int:
    """Rewrite a ControlNet in another layout (and dtype) as .safetensors, after a strict check."""
    from .formats import DTYPES, convert_checkpoint

    written = convert_checkpoint(args.input, args.output, args.to, dtype=DTYPES[args.dtype] if args.dtype else None)
    for path in written:
        sys.stdout.write(f"wrote {path}\n")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Train the toy ControlNet and write the convergence picture (see controlnet_core/demo.py)."""
    import torch

    from .demo import DemoSettings, curve_rows, run_demo

    torch.set_num_threads(args.threads)  # the CLI owns the process; tiny models run fastest on one thread
    settings = DemoSettings(steps=args.steps, eval_every=args.eval_every, seed=args.seed)
    result = run_demo(args.out, settings)
    sys.stdout.write("step  IoU   edgeF1 SSIM\n" + "\n".join(curve_rows(result)) + "\n")
    sys.stdout.write(f"wrote {result.path}\n{result.summary}\n")
    return 0


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The argument parser; the preprocess sub-parser is imported only when that command is asked for."""
    parser = argparse.ArgumentParser(prog="python -m controlnet_core", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="kind, family, layout, dtype, parameters and residual widths of a control file")
    p.add_argument("file", help=".safetensors / .pth / .ckpt / .bin / .pt, or a diffusers folder")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("convert", help="rewrite a ControlNet as ldm or diffusers .safetensors")
    p.add_argument("input", help="any layout `inspect` reads")
    p.add_argument("output", help="ldm: a .safetensors file; diffusers: a folder (weights + config.json) "
                                  "or a .safetensors file (weights only)")
    p.add_argument("--to", required=True, choices=("ldm", "diffusers", "tencentarc"),
                   help="layout to write (ControlNet: ldm or diffusers; T2I-Adapter: tencentarc or diffusers)")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="cast floating-point weights (default: keep)")
    p.set_defaults(func=_convert)

    if command == "preprocess":
        from .preprocess import cli  # lazily: a broken preprocess module must not break inspect/convert

        cli.add_parser(sub)
    else:
        sub.add_parser("preprocess", help=PREPROCESS_HELP, add_help=False)

    p = sub.add_parser("demo", help="train the toy ControlNet from the committed base; write the convergence PNG")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--steps", type=int, default=500, help="ControlNet training steps (about 0.13 s each here)")
    p.add_argument("--eval-every", type=int, default=25, help="evaluate the control-following metric every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the models are tiny)")
    p.set_defaults(func=_demo)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


LAYOUT_LIST = "; layouts read: "  # formats.py appends every layout it reads (hundreds of characters)


def _fail(message: str) -> int:
    """One line on stderr, exit status 1: what the file is and the fix, without the library's list of layouts."""
    if LAYOUT_LIST in message:
        message = message.split(LAYOUT_LIST)[0] + " (layouts read: docs/formats.md)"
    sys.stderr.write("error: " + " ".join(message.split()) + "\n")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m controlnet_core` and the `controlnet-core` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_command(argv))
    except Exception as exc:  # noqa: BLE001 - a broken optional module: say what it is, in one line
        return _fail(f"the preprocess command is unavailable: {type(exc).__name__}: {exc}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")
    try:
        if args.command == "preprocess":
            from .preprocess import cli

            return int(cli.run(args))
        return int(args.func(args))
    except (ControlNetError, OSError) as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
