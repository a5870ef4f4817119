"""Presentation attacks made from a photo: what a gate's liveness challenge must refuse.

A printed photo or a phone held up to the camera is a plane. These generators make, from one
frontal photo (BGR uint8), the frames a camera would see of it:

- `perspective_warp`: the photo rotated as a rigid plane about its centre (yaw about the
  vertical axis, pitch about the horizontal one, roll in the image plane) and projected by a
  pinhole camera into a `FRAME_SIZE` frame over a backdrop; optionally with hand shake (a small
  random extra rotation, shift and scale per frame) and JPEG re-encoding (quality 50-90).
- `photo_turn`: a sequence of such frames, out to the target angle and back (what an attacker
  shows when asked to turn).
- `scaled_translated`: the photo held flat, moved nearer or further and sideways.
- `on_screen`: the photo shown on a synthetic phone or monitor (black bezel, moire, gamma,
  colour cast, slight blur); the result is itself a photo to warp.

The plane's angles follow the pose convention of `facegate.vision.face` for the way it is
turned: yaw > 0 turns its normal toward the image's left (its image-left edge recedes), pitch
> 0 turns it up (its top edge recedes). A plane only foreshortens: the face in it keeps
looking at the photo's own camera.

Every random choice is drawn from the `rng` given (`numpy.random.Generator`), so a seed gives
the same frames.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

ImageArray = npt.NDArray[np.uint8]

FRAME_SIZE = (640, 480)  # width, height: a webcam frame
# Focal length in pixels of the camera looking at the photo: 640 px on a 640 px wide frame is a
# horizontal field of view of 53 deg, a usual webcam.
FOCAL = 640.0
MAX_ANGLE = 60.0  # degrees: beyond this a held photo shows too little to be detected
JPEG_QUALITY = (50, 90)  # inclusive range of re-encoding qualities
# Hand shake, one standard deviation per frame: rotation (deg), shift (fraction of the frame
# width), scale (fraction).
SHAKE_DEGREES = 1.5
SHAKE_SHIFT = 0.012
SHAKE_SCALE = 0.02


def backdrop(rng: np.random.Generator, frame_size: tuple[int, int] = FRAME_SIZE) -> ImageArray:
    """A smooth random backdrop (a room out of focus): low-resolution noise, upsampled."""
    width, height = frame_size
    grey = rng.uniform(50, 190) + rng.normal(0.0, 30.0, size=(6, 8, 1))
    tint = rng.normal(0.0, 10.0, size=(1, 1, 3))
    coarse = grey + tint + rng.normal(0.0, 5.0, size=(6, 8, 3))
    big = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(big, 0, 255).astype(np.uint8)


def rotation(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> npt.NDArray[np.float64]:
    """The plane's rotation: roll in the image plane, then pitch, then yaw (camera axes, x right,
    y down, z away from the camera), signed as the module docstring says."""
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    # Pitch > 0 sends the top edge (y < 0) away from the camera (z grows).
    rx = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    result: npt.NDArray[np.float64] = ry @ rx @ rz
    return result


def plane_homography(
    photo_size: tuple[int, int],
    yaw_deg: float,
    pitch_deg: float,
    roll_deg: float = 0.0,
    *,
    scale: float = 1.0,
    centre: tuple[float, float] | None = None,
    frame_size: tuple[int, int] = FRAME_SIZE,
    focal: float = FOCAL,
) -> npt.NDArray[np.float64]:
    """The 3x3 map from photo pixels to frame pixels of a photo `photo_size` (width, height)
    rotated about its centre, whose centre projects to `centre` (the frame's by default) and
    which appears `scale` frame pixels per photo pixel when facing the camera."""
    pw, ph = photo_size
    fw, fh = frame_size
    cx, cy = centre if centre is not None else (fw / 2.0, fh / 2.0)
    depth = focal / scale  # photo pixels are the world unit
    offset = np.array([(cx - fw / 2.0) * depth / focal, (cy - fh / 2.0) * depth / focal, depth])
    corners = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float64)
    world = np.column_stack([corners - [pw / 2.0, ph / 2.0], np.zeros(4)])
    cam = world @ rotation(yaw_deg, pitch_deg, roll_deg).T + offset
    if (cam[:, 2] <= 0.05 * depth).any():
        raise ValueError("the photo would reach behind the camera: use a smaller scale or angle")
    image = focal * cam[:, :2] / cam[:, 2:3] + [fw / 2.0, fh / 2.0]
    h = cv2.getPerspectiveTransform(corners.astype(np.float32), image.astype(np.float32))
    return np.asarray(h, np.float64)


def jpeg(image: ImageArray, rng: np.random.Generator) -> ImageArray:
    """`image` re-encoded as JPEG at a random quality in JPEG_QUALITY."""
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return np.asarray(decoded, np.uint8)


def perspective_warp(
    img: ImageArray,
    yaw_deg: float,
    pitch_deg: float,
    rng: np.random.Generator,
    *,
    roll_deg: float = 0.0,
    shake: bool = False,
    jpeg_noise: bool = False,
    scale: float = 1.0,
    centre: tuple[float, float] | None = None,
    frame_size: tuple[int, int] = FRAME_SIZE,
    background: ImageArray | None = None,
) -> ImageArray:
    """One frame of the photo `img` held as a plane at (yaw, pitch, roll) degrees in front of
    the camera (|yaw|, |pitch| <= MAX_ANGLE), over `background` (a fresh `backdrop` if None).
    With `shake`, a small random extra rotation, shift and scale; with `jpeg_noise`, the frame
    re-encoded as JPEG at quality 50-90."""
    if max(abs(yaw_deg), abs(pitch_deg)) > MAX_ANGLE + 1e-9:
        raise ValueError(f"angles beyond +-{MAX_ANGLE:g} deg are not a photo one can still see")
    fw, fh = frame_size
    cx, cy = centre if centre is not None else (fw / 2.0, fh / 2.0)
    if shake:
        yaw_deg += float(rng.normal(0.0, SHAKE_DEGREES))
        pitch_deg += float(rng.normal(0.0, SHAKE_DEGREES))
        roll_deg += float(rng.normal(0.0, SHAKE_DEGREES))
        cx += float(rng.normal(0.0, SHAKE_SHIFT * fw))
        cy += float(rng.normal(0.0, SHAKE_SHIFT * fw))
        scale *= float(1.0 + rng.normal(0.0, SHAKE_SCALE))
    ph, pw = img.shape[:2]
    h = plane_homography(
        (pw, ph), yaw_deg, pitch_deg, roll_deg, scale=scale, centre=(cx, cy), frame_size=frame_size
    )
    back = background if background is not None else backdrop(rng, frame_size)
    # Supersample the photo's edge and content: warp at 2x, then area-average down (frame
    # pixel centre x is the centre of the 2x pixels 2x and 2x + 1, at 2x + 0.5).
    up = np.array([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]]) @ h
    big = cv2.warpPerspective(img, up, (2 * fw, 2 * fh), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(
        np.full(img.shape[:2], 255, np.uint8), up, (2 * fw, 2 * fh), flags=cv2.INTER_LINEAR
    )
    big = cv2.resize(big, (fw, fh), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(mask, (fw, fh), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    frame = big.astype(np.float32) * alpha[..., None] + back.astype(np.float32) * (
        1.0 - alpha[..., None]
    )
    out = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    return jpeg(out, rng) if jpeg_noise else out


def photo_turn(
    img: ImageArray,
    yaw_deg: float,
    pitch_deg: float,
    rng: np.random.Generator,
    *,
    frames: int = 9,
    shake: bool = True,
    jpeg_noise: bool = True,
    scale: float = 1.0,
    frame_size: tuple[int, int] = FRAME_SIZE,
) -> list[ImageArray]:
    """An attacker's answer to "turn your head": `frames` frames of the photo tilted from facing
    the camera out to (yaw, pitch) and back (a smooth out-and-back), over one backdrop."""
    if frames < 3:
        raise ValueError("a turn needs at least 3 frames (front, turned, front)")
    back = backdrop(rng, frame_size)
    steps = np.sin(np.linspace(0.0, math.pi, frames))  # 0 -> 1 -> 0
    steps[0] = steps[-1] = 0.0
    return [
        perspective_warp(
            img,
            float(s) * yaw_deg,
            float(s) * pitch_deg,
            rng,
            shake=shake,
            jpeg_noise=jpeg_noise,
            scale=scale,
            frame_size=frame_size,
            background=back,
        )
        for s in steps
    ]


def scaled_translated(
    img: ImageArray,
    rng: np.random.Generator,
    *,
    scale: float | None = None,
    shift: tuple[float, float] | None = None,
    shake: bool = False,
    jpeg_noise: bool = False,
    frame_size: tuple[int, int] = FRAME_SIZE,
    background: ImageArray | None = None,
) -> ImageArray:
    """The photo held flat (facing the camera), `scale` frame pixels per photo pixel (random in
    0.7-1.4 if None) and its centre moved by `shift` (dx, dy) frame pixels (random, up to 15%
    of the frame's width, if None): moved instead of turned."""
    fw, fh = frame_size
    if scale is None:
        scale = float(rng.uniform(0.7, 1.4))
    if shift is None:
        shift = (float(rng.uniform(-0.15, 0.15) * fw), float(rng.uniform(-0.15, 0.15) * fw))
    centre = (fw / 2.0 + shift[0], fh / 2.0 + shift[1])
    return perspective_warp(
        img,
        0.0,
        0.0,
        rng,
        shake=shake,
        jpeg_noise=jpeg_noise,
        scale=scale,
        centre=centre,
        frame_size=frame_size,
        background=background,
    )


def on_screen(
    img: ImageArray,
    rng: np.random.Generator,
    *,
    bezel: float = 0.06,
    moire: float | None = None,
    gamma: float | None = None,
    blur: float | None = None,
) -> ImageArray:
    """The photo as a camera sees it on a phone or monitor, facing the camera: the picture in a
    black bezel (`bezel` x its longer side on every edge), moire (the interference of the
    screen's pixel grid with the camera's: a fine sinusoidal grating of 2.5-5 px and its beat,
    coloured fringes of 20-80 px, each of relative amplitude `moire` / 2, random 0.04-0.10 if
    None), a display gamma (random 0.7-1.4 if None), a slight bluish cast and a Gaussian blur of
    `blur` px (random 0.5-1.2 if None). Returns the device's picture, to place with
    `perspective_warp`."""
    if moire is None:
        moire = float(rng.uniform(0.04, 0.10))
    if gamma is None:
        gamma = float(rng.uniform(0.7, 1.4))
    if blur is None:
        blur = float(rng.uniform(0.5, 1.2))
    h, w = img.shape[:2]
    screen = img.astype(np.float32) / 255.0
    screen = np.power(screen, gamma)
    cast = np.array([1.06, 1.0, 0.94], np.float32)  # B, G, R: a screen's cooler white
    screen = screen * cast
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = float(rng.uniform(0.0, math.pi))
    along = xx * math.cos(angle) + yy * math.sin(angle)
    fine = np.sin(2 * math.pi * along / float(rng.uniform(2.5, 5.0)) + rng.uniform(0, 2 * math.pi))
    beat_angle = angle + float(rng.uniform(-0.5, 0.5))
    beat_along = xx * math.cos(beat_angle) + yy * math.sin(beat_angle)
    beat_period = float(rng.uniform(20.0, 80.0))
    pattern = np.empty((h, w, 3), np.float32)
    for c in range(3):  # the fringes are coloured: each channel at its own phase
        phase = float(rng.uniform(0, 2 * math.pi))
        beat = np.sin(2 * math.pi * beat_along / beat_period + phase)
        pattern[..., c] = 1.0 + 0.5 * moire * (fine + beat)
    screen = screen * pattern
    if blur > 0:
        screen = cv2.GaussianBlur(screen, (0, 0), blur)
    shown = np.clip(screen * 255.0 + 0.5, 0, 255).astype(np.uint8)
    margin = round(bezel * max(h, w))
    device = np.full((h + 2 * margin, w + 2 * margin, 3), 12, np.uint8)
    device[margin : margin + h, margin : margin + w] = shown
    return device
