"""Exceptions that mean "the user gave us something we cannot use".

Everything the CLI turns into one clear line and exit code 2 derives from `UserError`;
any other exception is a bug in lbrgm-fast and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (file, option, image), explained in the message."""


class CheckpointError(UserError):
    """A checkpoint file that cannot be read, is unsafe, or is not a supported StyleGAN2."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that asks the unpickler for something outside the allow-list."""


class ImageError(UserError):
    """An input image, mask or observation that cannot be used."""


class WeightsNotFoundError(UserError):
    """A pretrained weight file (VGG16, AlexNet, LPIPS lin) that is neither local nor downloadable."""


class PlanError(UserError):
    """An engine plan file that is corrupt, truncated, foreign or of an unknown version."""
