"""Scene cuts: the picture changed at once (an edited video's cut, a PTZ camera jumping to
another preset, a stream switched to another camera).

Compared frame to frame: the colour distribution (hue x saturation histogram of a 64x36
thumbnail, Bhattacharyya distance), which motion barely changes but a new scene does.
Measured on the clips of ../shared/data/video: the three cuts of the Hamilton clip score
0.40-0.53, and no other pair of frames of any clip scores above 0.18, even 5 frames apart (a
slow engine skips frames) and during camera pans; the default cut-off is 0.3.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from facegate.vision.face import ImageArray

THUMB = (64, 36)
BINS = [12, 8]
RANGES = [0, 180, 0, 256]


def signature(image: ImageArray) -> npt.NDArray[np.float32]:
    small = cv2.resize(image, THUMB, interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, BINS, RANGES)
    return np.asarray(cv2.normalize(hist, hist), dtype=np.float32)


class SceneCuts:
    """Feed every processed frame; `is_cut` says whether it starts a new scene."""

    def __init__(self, max_distance: float) -> None:
        self.max_distance = max_distance
        self._last: npt.NDArray[np.float32] | None = None
        self.last_distance = 0.0

    def is_cut(self, image: ImageArray) -> bool:
        current = signature(image)
        previous, self._last = self._last, current
        if previous is None:
            return False
        self.last_distance = float(cv2.compareHist(previous, current, cv2.HISTCMP_BHATTACHARYYA))
        return self.last_distance > self.max_distance
