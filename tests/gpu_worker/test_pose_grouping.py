"""The openpose annotator's grouping and drawing on hand-made heatmaps and part affinity fields:
joints found where the maps peak, limbs where the fields run along them, people kept whole and
apart, and the skeleton drawn in OpenPose's colours on black."""

from __future__ import annotations

import numpy as np

from gpu_worker.pose_grouping import (
    HEATMAP_CHANNELS,
    JOINTS,
    LIMB_FIELDS,
    LIMBS,
    PAF_CHANNELS,
    draw_bodies,
    find_bodies,
)

# One person, (x, y) of the 18 joints: nose, neck, right arm, left arm, right leg, left leg,
# eyes, ears. Limbs shorter than half the map's height (longer ones are penalised).
PERSON = (
    (80, 20), (80, 45), (55, 45), (45, 75), (40, 105), (105, 45), (115, 75), (120, 105),
    (65, 100), (62, 128), (60, 150), (95, 100), (98, 128), (100, 150), (74, 15), (86, 15),
    (68, 18), (92, 18),
)  # fmt: skip
HEIGHT = 160


def maps_of(
    people: list[tuple[tuple[int, int], ...]], width: int, fields: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps with a Gaussian peak at each joint; each limb's field the unit vector along it
    within 1.5 px of the segment."""
    ys, xs = np.mgrid[0:HEIGHT, 0:width]
    heatmaps = np.zeros((HEIGHT, width, HEATMAP_CHANNELS), dtype=np.float32)
    pafs = np.zeros((HEIGHT, width, PAF_CHANNELS), dtype=np.float32)
    for joints in people:
        for joint, (x, y) in enumerate(joints):
            peak = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.0**2))
            heatmaps[:, :, joint] = np.maximum(heatmaps[:, :, joint], peak)
        if not fields:
            continue
        for (a, b), (cx, cy) in zip(LIMBS, LIMB_FIELDS, strict=True):
            (xa, ya), (xb, yb) = joints[a], joints[b]
            length = np.hypot(xb - xa, yb - ya)
            ux, uy = (xb - xa) / length, (yb - ya) / length
            t = np.clip(((xs - xa) * ux + (ys - ya) * uy) / length, 0, 1)
            near = np.hypot(xs - (xa + t * (xb - xa)), ys - (ya + t * (yb - ya))) <= 1.5
            pafs[near, cx], pafs[near, cy] = ux, uy
    return heatmaps, pafs


def shifted(joints: tuple[tuple[int, int], ...], dx: int) -> tuple[tuple[int, int], ...]:
    return tuple((x + dx, y) for x, y in joints)


def joints_of(candidates: np.ndarray, person: np.ndarray) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in candidates[int(i), :2]) for i in person[:JOINTS]]  # type: ignore[misc]


def test_one_person_is_found_whole_with_every_joint_where_its_heatmap_peaks() -> None:
    candidates, people = find_bodies(*maps_of([PERSON], 160))
    assert len(candidates) == JOINTS and len(people) == 1
    assert joints_of(candidates, people[0]) == list(PERSON)
    assert people[0][JOINTS + 1] == JOINTS  # joint count
    assert people[0][JOINTS] / JOINTS > 0.9  # strong peaks and fields: a high mean score


def test_two_people_side_by_side_stay_two_people() -> None:
    left, right = PERSON, shifted(PERSON, 160)
    candidates, people = find_bodies(*maps_of([left, right], 320))
    assert len(people) == 2
    found = sorted((joints_of(candidates, p) for p in people), key=lambda j: j[0][0])
    assert found == [list(left), list(right)]


def test_joints_without_fields_linking_them_are_nobody() -> None:
    candidates, people = find_bodies(*maps_of([PERSON], 160, fields=False))
    assert len(candidates) == JOINTS and len(people) == 0
    assert not draw_bodies(candidates, people, (160, HEIGHT)).any()  # all black


def test_a_person_of_fewer_than_four_joints_is_dropped() -> None:
    heatmaps, pafs = maps_of([PERSON], 160)
    heatmaps[:, :, 3:] = 0  # only nose, neck and right shoulder remain
    candidates, people = find_bodies(heatmaps, pafs)
    assert len(candidates) == 3 and len(people) == 0


def test_a_limb_against_its_field_is_not_a_limb() -> None:
    heatmaps, pafs = maps_of([PERSON], 160)
    cx, cy = LIMB_FIELDS[3]  # right elbow to right wrist
    pafs[:, :, cx], pafs[:, :, cy] = -pafs[:, :, cx], -pafs[:, :, cy]
    candidates, people = find_bodies(heatmaps, pafs)
    assert len(people) == 1 and people[0][4] == -1  # the wrist is no longer part of the body
    assert people[0][JOINTS + 1] == JOINTS - 1


def test_the_skeleton_is_drawn_in_openposes_colours_on_black() -> None:
    candidates, people = find_bodies(*maps_of([PERSON], 160))
    canvas = draw_bodies(candidates, people, (160, HEIGHT))
    assert canvas.shape == (HEIGHT, 160, 3) and canvas.dtype == np.uint8
    assert not canvas[:8].any() and not canvas[:, :30].any()  # black around the body
    # joints: full colour discs on OpenPose's wheel (nose red, neck orange, right wrist lime, left
    # ankle violet)
    joint_colours = {0: (255, 0, 0), 1: (255, 85, 0), 4: (170, 255, 0), 13: (85, 0, 255)}
    for joint, colour in joint_colours.items():
        x, y = PERSON[joint]
        assert tuple(canvas[y, x]) == colour
    # limbs: their colour at 60 %, between the joints (right forearm yellow, left shin blue)
    for limb, colour in {3: (153, 153, 0), 11: (0, 51, 153)}.items():
        (xa, ya), (xb, yb) = PERSON[LIMBS[limb][0]], PERSON[LIMBS[limb][1]]
        assert tuple(canvas[(ya + yb) // 2, (xa + xb) // 2]) == colour
    # the ear-to-shoulder pairs group the body but are not drawn: nothing between them
    (xa, ya), (xb, yb) = PERSON[2], PERSON[16]
    assert not canvas[(ya + yb) // 2, (xa + xb) // 2].any()
