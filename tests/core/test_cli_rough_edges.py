"""The command line as a new user meets it: one-line errors with the fix, help that says what each option does."""
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from controlnet_core.__main__ import main


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def _error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_without_cuda_is_one_line(picture, tmp_path, capsys):
    err = _error(capsys, ["preprocess", "canny", str(picture), str(tmp_path / "o.png"), "--device", "cuda"])
    assert "--device cuda" in err and "--device cpu" in err


def test_unknown_device_is_one_line(picture, tmp_path, capsys):
    err = _error(capsys, ["preprocess", "canny", str(picture), str(tmp_path / "o.png"), "--device", "gpu0"])
    assert "'gpu0' is not a torch device" in err


@pytest.mark.parametrize("given, missing", [("target_width", "target_height"), ("target_height", "target_width")])
def test_one_target_side_alone_is_refused(given, missing, picture, tmp_path, capsys):
    err = _error(capsys, ["preprocess", "canny", str(picture), str(tmp_path / "o.png"), f"--{given}", "512"])
    assert f"--{given} needs --{missing}" in err


def test_both_target_sides_work(picture, tmp_path):
    out = tmp_path / "o.png"
    assert main(["preprocess", "canny", str(picture), str(out), "--target_width", "64", "--target_height",
                 "48"]) == 0
    assert Image.open(out).size == (64, 48)


def test_help_lists_each_preprocessors_own_options_with_defaults(capsys):
    from controlnet_core.preprocess import PREPROCESSORS

    with pytest.raises(SystemExit):
        main(["preprocess", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "format follows the extension" in text
    for name, spec in PREPROCESSORS.items():
        section = text.split(f" {name} ", 1)[1]
        for option in spec.options:  # each preprocessor's own tooltip and default, even when names are shared
            line = " ".join(f"--{option.name} {option.kind.upper()}".split())
            assert line in section and f"(default: {option.default})" in section, (name, option.name)


def test_output_format_follows_the_extension(picture, tmp_path):
    out = tmp_path / "o.jpg"
    assert main(["preprocess", "canny", str(picture), str(out)]) == 0
    assert Image.open(out).format == "JPEG"


def test_unknown_output_extension_is_one_line(picture, tmp_path, capsys):
    err = _error(capsys, ["preprocess", "canny", str(picture), str(tmp_path / "o.notaformat")])
    assert "cannot write this format" in err


def test_inpaint_without_mask_speaks_of_the_flag(picture, tmp_path, capsys):
    err = _error(capsys, ["preprocess", "inpaint", str(picture), str(tmp_path / "o.png")])
    assert "--mask FILE" in err and "connect" not in err and "MASK" not in err  # no node vocabulary


@pytest.mark.parametrize("key, kind", [("model.diffusion_model.x", "Stable Diffusion checkpoint"),
                                       ("controlnet_blocks.0.linear.weight", "Flux ControlNet"),
                                       ("lllite_unet_input_blocks_4.weight", "ControlNet-LLLite")])
def test_foreign_file_is_one_short_line_with_kind_and_fix(key, kind, tmp_path, capsys):
    path = tmp_path / "foreign.safetensors"
    save_file({key: torch.zeros(2)}, str(path))
    err = _error(capsys, ["inspect", str(path)])
    assert kind in err and "load it with" in err and "\n" not in err.strip(), err
    assert len(err.replace(str(path), "")) < 300, err
