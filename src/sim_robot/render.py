"""Camera images for ``sim_robot``: a cheap OpenCV scene that changes over time.

The frame is drawn into one preallocated ``array.array('B')`` that a numpy view aliases, so a
frame costs a few drawing calls and no allocation; the node hands the same buffer to the
``sensor_msgs/Image`` every time. The scene (a floor grid scrolling with the robot's odometry,
a moving box, a clock hand) makes consecutive frames differ, and the sim time plus a frame
counter are printed in the image, so a recorded or replayed frame can be matched to its stamp
by eye. No rclpy import.
"""

from __future__ import annotations

import array
import math

import cv2
import numpy as np


class SceneRenderer:
    """Renders ``height × width`` rgb8 frames into :attr:`buffer` (row-major, step = 3·width)."""

    def __init__(self, width: int = 640, height: int = 480, label: str = '') -> None:
        if width < 64 or height < 48:
            raise ValueError(f'camera image {width}x{height} is too small (min 64x48)')
        self.width = width
        self.height = height
        self.label = label
        self.buffer = array.array('B', bytes(width * height * 3))
        self.image = np.frombuffer(self.buffer, dtype=np.uint8).reshape(height, width, 3)
        # Static background (sky over floor), copied in with one memcpy per frame.
        self._background = np.empty_like(self.image)
        horizon = height // 2
        self._background[:horizon] = (150, 190, 230)
        self._background[horizon:] = (90, 90, 80)
        self.frames = 0

    def render(self, sim_time: float, x: float = 0.0, yaw: float = 0.0) -> array.array:
        """Draw the frame for ``sim_time`` (s) seen from base pose (``x`` m, ``yaw`` rad)."""
        img = self.image
        w, h = self.width, self.height
        np.copyto(img, self._background)
        horizon = h // 2
        # Floor lines scroll as the robot drives forward; a slowly drifting scene otherwise.
        offset = (x * 80.0 + sim_time * 20.0) % 40.0
        for k in range(12):
            y = int(horizon + (k * 40.0 + offset) ** 1.15 / 2.0)
            if y < h:
                cv2.line(img, (0, y), (w - 1, y), (120, 120, 110), 2)
        shift = int((yaw * 200.0) % w)
        for k in range(-4, 5):
            x0 = w // 2 + k * 80 - shift % 80
            cv2.line(img, (w // 2 + k * 20, horizon), (x0 - k * 150, h - 1), (110, 110, 100), 1)
        # A box moving across the scene and a rotating hand: every frame differs.
        bx = int((math.sin(sim_time * 0.7) * 0.4 + 0.5) * (w - 80))
        cv2.rectangle(img, (bx, horizon - 60), (bx + 80, horizon + 20), (200, 60, 40), -1)
        cx, cy, r = w - 60, 60, 40
        angle = sim_time * 2.0 * math.pi / 10.0
        cv2.circle(img, (cx, cy), r, (255, 255, 255), 2)
        cv2.line(img, (cx, cy), (int(cx + r * math.sin(angle)), int(cy - r * math.cos(angle))),
                 (20, 20, 20), 3)
        text = f'{self.label} t={sim_time:.3f}s #{self.frames}'
        cv2.rectangle(img, (0, h - 30), (w - 1, h - 1), (0, 0, 0), -1)
        cv2.putText(img, text, (8, h - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1,
                    cv2.LINE_AA)
        self.frames += 1
        return self.buffer
