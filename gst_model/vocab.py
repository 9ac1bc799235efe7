"""The joint token vocabulary and the two sequence layouts GST is trained on.

Ids [0, image_codes) are image-tokenizer codes, the next camera_codes ids are camera-tokenizer
codes (camera code c <-> token image_codes + c), then <GEN> and <EST>. With the official sizes
(16384, 2048) this gives <GEN> = 18432, <EST> = 18433 and a vocabulary of 18434.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Task(str, Enum):
    """Which factorisation a sequence follows.

    VIEW  (official, released): [observation][<GEN>][camera][target image]  -> p(c, i | o)
    POSE  (paper's p(c | i, o); not in the release, our choice):
          [observation][<EST>][target image][camera]  -> the camera is generated last,
          conditioned on both images. Same length and the same RoPE table as VIEW.
    """

    VIEW = "view"
    POSE = "pose"


@dataclass(frozen=True)
class Vocabulary:
    image_codes: int = 16384
    camera_codes: int = 2048
    tokens_per_view: int = 256  # grid_size ** 2, the same for image and camera segments

    @property
    def camera_offset(self) -> int:
        return self.image_codes

    @property
    def gen_token(self) -> int:
        return self.image_codes + self.camera_codes

    @property
    def est_token(self) -> int:
        return self.gen_token + 1

    @property
    def size(self) -> int:
        return self.est_token + 1

    @property
    def prompt_length(self) -> int:
        """Observation tokens plus the task token."""
        return self.tokens_per_view + 1

    @property
    def sequence_length(self) -> int:
        return 3 * self.tokens_per_view + 1

    def task_token(self, task: Task) -> int:
        return self.gen_token if Task(task) is Task.VIEW else self.est_token

    def image_range(self) -> tuple[int, int]:
        """Half-open id range of image codes."""
        return 0, self.image_codes

    def camera_range(self) -> tuple[int, int]:
        """Half-open id range of camera codes."""
        return self.camera_offset, self.camera_offset + self.camera_codes
