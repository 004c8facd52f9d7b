"""`python -m controlnet_core preprocess NAME IN OUT [--option value]`: round trips and one-line errors."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from controlnet_core.__main__ import main

import skimage.data as skimage_data  # noqa: E402  (a test dependency: missing fails)


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(path)
    return path


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_canny_round_trip_in_a_subprocess_equals_cv2(cat_png, tmp_path):
    out = tmp_path / "edges.png"
    result = subprocess.run([sys.executable, "-m", "controlnet_core", "preprocess", "canny", str(cat_png), str(out),
                             "--low_threshold", "100", "--high_threshold", "200"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    edges = read(out)
    rgb = read(cat_png)
    assert edges.shape == rgb.shape  # the input's size, 3 channels
    assert np.array_equal(edges[..., 0], cv2.Canny(rgb, 100, 200))


def test_options_resolution_and_mask(cat_png, tmp_path):
    out = tmp_path / "small.png"
    assert main(["preprocess", "lineart_standard", str(cat_png), str(out), "--resolution", "128",
                 "--temporal_normalize", "true"]) == 0
    assert read(out).shape == (128, 192, 3)  # 300x451 -> short side 128, long 192.4 -> 192
    mask_path = tmp_path / "mask.png"
    mask = np.zeros((300, 451), np.uint8)
    mask[:100] = 255
    Image.fromarray(mask).save(mask_path)
    out = tmp_path / "inpaint.png"
    assert main(["preprocess", "inpaint", str(cat_png), str(out), "--mask", str(mask_path)]) == 0
    result = read(out)
    assert result[:100].max() == 0  # -1 is clipped to black in an 8-bit file
    assert np.array_equal(result[100:], read(cat_png)[100:])


@pytest.mark.parametrize("argv, message, named", [
    (["canny", "{missing}", "{out}"], "no such file", "missing"),
    (["cany", "{img}", "{out}"], "unknown preprocessor 'cany'", None),
    (["canny", "{img}", "{out}", "--low_threshold", "999"], "999 is above the maximum 255", "img"),
    (["canny", "{img}", "{out}", "--gamma", "2"], "canny does not take --gamma", None),
    (["canny", "{img}", "{out}", "--low_threshold", "abc"], "'abc' is not a number", "img"),
    (["canny", "{text}", "{out}"], "not a readable picture", "text"),
    (["depth", "{img}", "{out}", "--models_dir", "{folder}"], "lacks config.json", "folder"),
    (["canny", "{img}", "{nofolder}"], "does not exist", "nofolder"),
])
def test_errors_exit_1_with_one_line_naming_the_file(argv, message, named, cat_png, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    names = {"missing": tmp_path / "missing.png", "out": tmp_path / "out.png", "img": cat_png, "text": text,
             "folder": tmp_path, "nofolder": tmp_path / "no" / "out.png"}
    code = main(["preprocess", *(a.format(**{k: str(v) for k, v in names.items()}) for a in argv)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    if named is not None:
        assert str(names[named]) in err
