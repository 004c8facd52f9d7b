"""Pose rendering against controlnet_aux 0.0.10's drawing functions (the ControlNet 1.1 training code's rules):
`dwpose.util.draw_bodypose(canvas, candidate, subset)` (all limbs of all people, x 0.6 once, joints),
`draw_handpose`, `draw_facepose`. Same keypoints, several canvas sizes: 0 differing pixels."""
from __future__ import annotations

import numpy as np
import pytest

from controlnet_core.errors import PreprocessError
from controlnet_core.preprocess.pose import frames_json, parse, render_pose_keypoint
from controlnet_core.preprocess.pose.draw import (
    Person,
    draw_people,
    hand_color,
    stick_width,
)

util = pytest.importorskip("controlnet_aux.dwpose.util")

SIZES = ((512, 512), (384, 640), (768, 512), (97, 131))


def random_person(g: np.random.Generator, missing: float = 0.0, hands: bool = True, face: bool = True) -> Person:
    """A person with points in [-0.05, 1.05] (some off the canvas, some on row/column 0), a fraction missing."""
    def pts(n):
        p = g.uniform(-0.05, 1.05, (n, 2))
        p[g.uniform(size=n) < missing] = np.nan
        p[g.integers(0, n)] = (0.0, g.uniform())  # on column 0: the eps rule hides it for hands and face
        return p

    return Person(pts(18), pts(21) if hands else None, pts(21) if hands else None, pts(70) if face else None)


def reference(people: list[Person], h: int, w: int) -> np.ndarray:
    """controlnet_aux's (training code's) drawing of the same people."""
    candidate = np.concatenate([p.body for p in people]) if people else np.zeros((0, 2))
    subset = np.full((len(people), 18), -1.0)
    for n, p in enumerate(people):
        for j in range(18):
            if not np.isnan(p.body[j]).any():
                subset[n, j] = n * 18 + j
    candidate = np.nan_to_num(candidate, nan=-1.0)
    canvas = util.draw_bodypose(np.zeros((h, w, 3), np.uint8), candidate, subset)
    hands = [np.nan_to_num(x, nan=-1.0) for p in people for x in (p.left_hand, p.right_hand) if x is not None]
    canvas = util.draw_handpose(canvas, hands)
    return util.draw_facepose(canvas, [np.nan_to_num(p.face, nan=-1.0) for p in people if p.face is not None])


@pytest.mark.parametrize("h, w", SIZES)
@pytest.mark.parametrize("count, missing", [(1, 0.0), (1, 0.3), (3, 0.0), (5, 0.2)])
def test_pixel_identical_to_training_code(h, w, count, missing):
    g = np.random.default_rng(h * 7 + w + count * 100 + int(missing * 10))
    people = [random_person(g, missing, hands=n % 2 == 0, face=n != 1) for n in range(count)]
    ours = draw_people(people, h, w)
    ref = reference(people, h, w)
    assert ours.shape == ref.shape == (h, w, 3)
    assert (ours != ref).sum() == 0
    assert ours.max() == 255 and (ours > 0).mean() > 0.005  # the test draws something (joints at full colour)


def test_body_hands_face_options_and_xinsir_sticks():
    g = np.random.default_rng(1)
    people = [random_person(g)]
    full = draw_people(people, 256, 256)
    body = draw_people(people, 256, 256, hands=False, face=False)
    ref_body = util.draw_bodypose(np.zeros((256, 256, 3), np.uint8), people[0].body, np.arange(18.0)[None])
    assert (body == ref_body).all() and (full != body).any()
    assert not draw_people(people, 256, 256, body=False, hands=False, face=False).any()
    assert stick_width(512, 512, False) == 4 and stick_width(499, 300, True) == 4
    assert stick_width(1024, 768, True) == 12 and stick_width(9000, 100, True) == 28
    thick = draw_people(people, 1024, 1024, hands=False, face=False, xinsir_sticks=True)
    assert (thick > 0).sum() > (draw_people(people, 1024, 1024, hands=False, face=False) > 0).sum()


def test_hand_colours_equal_matplotlib():
    import matplotlib.colors

    for edge in range(20):
        assert tuple(matplotlib.colors.hsv_to_rgb([edge / 20.0, 1.0, 1.0]) * 255) == hand_color(edge)


def test_several_people_overlap_differs_from_per_person_order():
    """Two overlapping people: the single 0.6 pass (training code) is not the per-person darkening of AUX's node."""
    from controlnet_aux.open_pose.util import draw_bodypose as per_person

    g = np.random.default_rng(3)
    body = g.uniform(0.3, 0.7, (18, 2))
    people = [Person(body), Person(body + 0.02)]
    ours = draw_people(people, 256, 256, hands=False, face=False)
    assert (ours == reference(people, 256, 256)).all()
    from controlnet_aux.open_pose.body import Keypoint

    aux = np.zeros((256, 256, 3), np.uint8)
    for p in people:
        aux = per_person(aux, [Keypoint(x, y) for x, y in p.body])
    assert (aux != ours).any()


def test_json_round_trip_pixels_and_normalised():
    g = np.random.default_rng(5)
    people = [random_person(g, 0.2), random_person(g, 0.2, hands=False, face=False)]
    frames = frames_json([(people, 640, 384)])
    assert frames[0]["canvas_width"] == 640 and len(frames[0]["people"][0]["pose_keypoints_2d"]) == 54
    assert frames[0]["people"][1]["hand_left_keypoints_2d"] is None
    (back, w, h), = parse(frames)
    assert (w, h) == (640, 384)
    np.testing.assert_allclose(back[0].body, people[0].body, atol=1e-9)
    np.testing.assert_allclose(back[0].face, people[0].face, atol=1e-9)
    hint = render_pose_keypoint(frames)  # at the canvas size
    assert hint.shape == (1, 384, 640, 3)
    assert (hint[0].numpy() * 255).round().astype(np.uint8).tolist() == draw_people(people, 384, 640).tolist()
    assert render_pose_keypoint(frames, 320, 192).shape == (1, 192, 320, 3)
    normalised = {"canvas_width": 100, "canvas_height": 50,
                  "people": [{"pose_keypoints_2d": [0.5, 0.5, 1.0] * 18}]}
    (back, _, _), = parse(__import__("json").dumps([normalised]))
    np.testing.assert_allclose(back[0].body, 0.5)


def test_empty_people_give_a_black_hint():
    hint = render_pose_keypoint([{"people": [], "canvas_width": 64, "canvas_height": 32}])
    assert hint.shape == (1, 32, 64, 3) and not hint.any()


@pytest.mark.parametrize("data, field", [
    ("{not json", "not valid JSON"),
    ([], "list of frame dicts"),
    ([{"people": [], "canvas_width": 64}], "frame 0.canvas_height"),
    ([{"people": {}, "canvas_width": 8, "canvas_height": 8}], "frame 0.people"),
    ([{"people": [{"pose_keypoints_2d": [1.0] * 51}], "canvas_width": 8, "canvas_height": 8}],
     "frame 0.people[0].pose_keypoints_2d"),
    ([{"people": [], "canvas_width": 8, "canvas_height": 8},
      {"people": [{"face_keypoints_2d": ["a"] * 210}], "canvas_width": 8, "canvas_height": 8}],
     "frame 1.people[0].face_keypoints_2d"),
])
def test_malformed_json_names_the_field(data, field):
    with pytest.raises(PreprocessError, match=__import__("re").escape(field)):
        render_pose_keypoint(data)
