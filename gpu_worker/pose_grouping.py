"""From the body network's maps to drawn skeletons, as OpenPose does it (and sd-webui-controlnet's
openpose module after it). Numpy and OpenCV only: tests feed it hand-made maps.

1. Joints: each of the 18 heatmaps, blurred (Gaussian, sigma 3), has a joint candidate at every
   pixel that is at least its four neighbours and above 0.1.
2. Limbs: for each of the 19 joint pairs, every candidate pair is scored by sampling the limb's
   part affinity field at 10 points along the segment: the field's component along the segment
   must pass 0.05 at more than 8 of them, and the mean, minus a penalty for limbs longer than
   half the image's height, must be positive. Pairs are taken best first, each joint once.
3. People: limbs are joined into people that share a joint, in the pairs' fixed order (neck
   first); two partial people that a limb links, and that hold no joint in common, merge. A
   person with fewer than 4 joints, or a mean score under 0.4, is dropped.
4. Drawing: on black, each of the first 17 limbs as an ellipse 4 px thick, its colour at 60 %,
   then each joint a disc of radius 4 in its colour (OpenPose's colour wheel, red to magenta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

JOINTS = 18  # nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder ... r-eye, l-eye, r-ear, l-ear
HEATMAP_CHANNELS = JOINTS + 1  # and the background
PAF_CHANNELS = 38
# (joint a, joint b) of each limb, and the (x, y) channels of its field, in OpenPose's order
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)  # fmt: skip
LIMB_FIELDS = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
    (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27),
)  # fmt: skip
DRAWN_LIMBS = 17  # the ear-to-shoulder pairs help grouping but are not drawn
COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip

JOINT_THRESHOLD = 0.1
FIELD_THRESHOLD = 0.05
BLUR_SIGMA = 3.0
BLUR_SIZE = 25  # 4 sigma each side
SAMPLES = 10
SAMPLES_PASSING = 0.8
MIN_JOINTS = 4
MIN_MEAN_SCORE = 0.4
STICK_WIDTH = 4
LIMB_SHADE = 0.6
JOINT_RADIUS = 4


@dataclass(frozen=True)
class Candidate:
    x: int
    y: int
    score: float
    id: int  # its row in the candidates array


def find_joints(heatmaps: np.ndarray) -> list[list[Candidate]]:
    """Each joint's candidates (numbered across all joints, row-major within one)."""
    found: list[list[Candidate]] = []
    next_id = 0
    for joint in range(JOINTS):
        raw = heatmaps[:, :, joint].astype(np.float32)
        blurred = cv2.GaussianBlur(
            raw, (BLUR_SIZE, BLUR_SIZE), BLUR_SIGMA, borderType=cv2.BORDER_REFLECT
        )
        padded = np.pad(blurred, 1)  # a neighbour outside the map counts as 0
        peak = blurred > JOINT_THRESHOLD
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            peak &= blurred >= padded[dy : dy + raw.shape[0], dx : dx + raw.shape[1]]
        ys, xs = np.nonzero(peak)
        joints = [
            Candidate(int(x), int(y), float(raw[y, x]), next_id + n)
            for n, (y, x) in enumerate(zip(ys, xs, strict=True))
        ]
        found.append(joints)
        next_id += len(joints)
    return found


def _limb_score(
    a: Candidate, b: Candidate, field_x: np.ndarray, field_y: np.ndarray
) -> float | None:
    """The pair's score as this limb, or None where the field does not back it."""
    dx, dy = b.x - a.x, b.y - a.y
    length = max(0.001, math.hypot(dx, dy))
    xs = np.round(np.linspace(a.x, b.x, SAMPLES)).astype(int)
    ys = np.round(np.linspace(a.y, b.y, SAMPLES)).astype(int)
    along = field_x[ys, xs] * (dx / length) + field_y[ys, xs] * (dy / length)
    score = float(along.mean()) + min(0.5 * field_x.shape[0] / length - 1, 0)
    passing = int(np.count_nonzero(along > FIELD_THRESHOLD))
    if passing > SAMPLES_PASSING * SAMPLES and score > 0:
        return score
    return None


def find_limbs(
    joints: list[list[Candidate]], pafs: np.ndarray
) -> list[list[tuple[Candidate, Candidate, float]]]:
    """Each limb's accepted (joint a, joint b, score), best first, each joint used once."""
    limbs: list[list[tuple[Candidate, Candidate, float]]] = []
    for (ja, jb), (cx, cy) in zip(LIMBS, LIMB_FIELDS, strict=True):
        scored = []
        for a in joints[ja]:
            for b in joints[jb]:
                score = _limb_score(a, b, pafs[:, :, cx], pafs[:, :, cy])
                if score is not None:
                    scored.append((a, b, score))
        scored.sort(key=lambda pair: pair[2], reverse=True)  # stable: ties keep scan order
        taken: list[tuple[Candidate, Candidate, float]] = []
        used_a: set[int] = set()
        used_b: set[int] = set()
        for a, b, score in scored:
            if len(taken) >= min(len(joints[ja]), len(joints[jb])):
                break
            if a.id not in used_a and b.id not in used_b:
                taken.append((a, b, score))
                used_a.add(a.id)
                used_b.add(b.id)
        limbs.append(taken)
    return limbs


def group_people(
    limbs: list[list[tuple[Candidate, Candidate, float]]], scores: np.ndarray
) -> np.ndarray:
    """People as rows: 18 candidate ids (-1 where absent), the total score, the joint count.
    `scores` holds each candidate's heatmap score by id."""
    people: list[np.ndarray] = []
    for limb, accepted in enumerate(limbs):
        ja, jb = LIMBS[limb]
        for a, b, score in accepted:
            holders = [p for p in people if p[ja] == a.id or p[jb] == b.id][:2]
            if len(holders) == 1 or (
                len(holders) == 2
                and np.any((holders[0][:JOINTS] >= 0) & (holders[1][:JOINTS] >= 0))
            ):
                person = holders[0]
                if person[jb] != b.id:  # a person holding b already has this limb
                    person[jb] = b.id
                    person[JOINTS + 1] += 1
                    person[JOINTS] += scores[b.id] + score
            elif len(holders) == 2:  # two disjoint parts of one person: merge them
                first, second = holders
                first[:JOINTS] = np.where(first[:JOINTS] >= 0, first[:JOINTS], second[:JOINTS])
                first[JOINTS:] += second[JOINTS:]
                first[JOINTS] += score
                people = [p for p in people if p is not second]
            elif limb < DRAWN_LIMBS:  # a new person (never from an ear-shoulder pair alone)
                person = np.full(JOINTS + 2, -1.0)
                person[ja], person[jb] = a.id, b.id
                person[JOINTS] = scores[a.id] + scores[b.id] + score
                person[JOINTS + 1] = 2
                people.append(person)
    kept = [
        p
        for p in people
        if p[JOINTS + 1] >= MIN_JOINTS and p[JOINTS] / p[JOINTS + 1] >= MIN_MEAN_SCORE
    ]
    return np.array(kept).reshape(len(kept), JOINTS + 2)


def find_bodies(heatmaps: np.ndarray, pafs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(candidates: rows of x, y, score, id; people: rows as `group_people` gives them)."""
    joints = find_joints(heatmaps)
    flat = [c for joint in joints for c in joint]
    candidates = np.array([(c.x, c.y, c.score, c.id) for c in flat], dtype=np.float64)
    candidates = candidates.reshape(len(flat), 4)
    return candidates, group_people(find_limbs(joints, pafs), candidates[:, 2])


def draw_bodies(candidates: np.ndarray, people: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The people's skeletons on black, RGB, (height, width, 3) for a (width, height) size."""
    canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for limb in range(DRAWN_LIMBS):
        colour = tuple(int(c * LIMB_SHADE) for c in COLOURS[limb])
        for person in people:
            ids = [int(person[j]) for j in LIMBS[limb]]
            if -1 in ids:
                continue
            (xa, ya), (xb, yb) = candidates[ids[0], :2], candidates[ids[1], :2]
            length = math.hypot(xa - xb, ya - yb)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            centre = (int((xa + xb) / 2), int((ya + yb) / 2))
            polygon = cv2.ellipse2Poly(
                centre, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1
            )
            cv2.fillConvexPoly(canvas, np.asarray(polygon, dtype=np.int32), colour)
    for joint in range(JOINTS):
        for person in people:
            index = int(person[joint])
            if index == -1:
                continue
            x, y = candidates[index, :2]
            cv2.circle(canvas, (int(x), int(y)), JOINT_RADIUS, COLOURS[joint], thickness=-1)
    return canvas
