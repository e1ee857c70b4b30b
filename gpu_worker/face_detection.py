"""Finding faces for face restoration, and putting restored faces back. Torch-free (OpenCV).

Detection uses OpenCV's FaceDetectorYN (YuNet) with an ONNX file the operator drops into
`models/FaceDetection/` (e.g. face_detection_yunet_2023mar.onnx from the OpenCV model zoo,
MIT-licensed): nothing is downloaded. Without one, face restoration restores the whole image
(GFPGAN's "aligned" mode, gpu_worker.face_restoration).

Each face's five landmarks (eyes, nose tip, mouth corners) are mapped by a similarity transform
onto the FFHQ template GFPGAN was trained on, the face is cut out at the model's size, restored,
and warped back through the inverse transform under a feathered mask, as GFPGAN's own helper
does.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

DETECTOR_FOLDER = "FaceDetection"
SCORE_THRESHOLD = 0.8
# Five landmarks of a 512 px FFHQ-aligned face: left eye, right eye (as seen), nose tip, left and
# right mouth corners (GFPGAN's face helper template).
FFHQ_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)
BORDER_VALUE = (135, 133, 132)  # the grey GFPGAN pads a crop with


def find_detector(models_dir: Path) -> Path | None:
    folder = Path(models_dir) / DETECTOR_FOLDER
    found = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    return found[0] if found else None


def detect_landmarks(detector: Path, image: Image.Image) -> list[np.ndarray]:
    """Each face's five landmarks ([5, 2], image pixels), most confident first."""
    bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
    height, width = bgr.shape[:2]
    yunet = cv2.FaceDetectorYN.create(str(detector), "", (width, height), SCORE_THRESHOLD)
    _, faces = yunet.detect(bgr)
    if faces is None:
        return []
    ranked = sorted(faces, key=lambda row: -float(row[-1]))
    # YuNet: x, y, w, h, then right eye, left eye (the subject's: the right one is seen on the
    # left), nose tip, right and left mouth corners, then the score.
    return [np.asarray(row[4:14], dtype=np.float32).reshape(5, 2) for row in ranked]


def alignment(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 similarity transform taking the landmarks onto the template at `size` px."""
    template = FFHQ_512 * (size / 512.0)
    matrix, _ = cv2.estimateAffinePartial2D(landmarks, template, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("the landmarks do not define a face")
    return matrix


def crop_face(image: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    rgb = np.asarray(image.convert("RGB"))
    face = cv2.warpAffine(
        rgb, matrix, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_VALUE
    )
    return Image.fromarray(face)


def paste_face(
    image: Image.Image, face: Image.Image, matrix: np.ndarray, visibility: float
) -> Image.Image:
    """The restored face warped back into the image under a feathered mask, at `visibility`."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = base.shape[:2]
    inverse = cv2.invertAffineTransform(matrix)
    back = cv2.warpAffine(np.asarray(face, dtype=np.float32), inverse, (width, height))
    size = face.width
    mask = cv2.warpAffine(np.ones((size, size), dtype=np.float32), inverse, (width, height))
    edge = max(1, int(size * 0.05))  # feather the border, as GFPGAN's paste-back does
    mask = cv2.erode(mask, np.ones((2 * edge + 1, 2 * edge + 1), np.uint8))
    mask = cv2.GaussianBlur(mask, (0, 0), edge)[..., None] * float(visibility)
    blended = base * (1.0 - mask) + back * mask
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
