"""The preprocessing spec: the single source of truth for how pixels become a tensor.

Training writes it into checkpoint metadata, export copies it into the bundle manifest,
and the service builds its numpy/Pillow pipeline from it. No stage re-types a mean, a
std or an input size. This module stays free of torch so the service can import it.
"""

from dataclasses import asdict, dataclass
from typing import Any

from slimserve.errors import SlimserveError

# Pillow's resampling filters by the names torchvision's InterpolationMode uses, so a
# spec can be turned into either library's constant without a lookup table elsewhere.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")

# Version 1 specs (no ``version`` key) predate ``resize_shorter``; they resize straight to
# height x width, which is what a version 2 spec with ``resize_shorter=None`` does.
SPEC_VERSION = 2


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image is turned into the model's input tensor.

    Steps, in order: apply EXIF orientation; flatten transparency onto
    ``alpha_background``; convert to ``L`` (1 channel) or ``RGB`` (3 channels); then either
    resize to ``height`` x ``width`` with ``interpolation`` if the size differs
    (``resize_shorter`` is None: small-image datasets), or resize the shorter side to
    ``resize_shorter`` keeping the aspect ratio and cut the central ``height`` x ``width``
    (torchvision's ImageNet evaluation transform, ``Resize(256)`` + ``CenterCrop(224)``);
    scale to [0, 1]; subtract ``mean`` and divide by ``std`` per channel; lay out as CHW
    float32. JPEGs larger than needed are decoded at a reduced scale first (see
    ``slimserve.imaging.draft_for``).
    """

    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    alpha_background: int = 0
    resize_shorter: int | None = None

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise SlimserveError(f"preprocess spec: channels must be 1 or 3, got {self.channels}")
        if self.height < 1 or self.width < 1:
            raise SlimserveError(
                f"preprocess spec: input size must be positive, got {self.height}x{self.width}"
            )
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise SlimserveError(
                f"preprocess spec: mean and std need {self.channels} values each, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise SlimserveError(f"preprocess spec: std must be positive, got {list(self.std)}")
        if self.interpolation not in INTERPOLATIONS:
            raise SlimserveError(
                f"preprocess spec: interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        if not 0 <= self.alpha_background <= 255:
            raise SlimserveError("preprocess spec: alpha_background must be in 0..255")
        if self.resize_shorter is not None and self.resize_shorter < max(self.height, self.width):
            raise SlimserveError(
                f"preprocess spec: resize_shorter ({self.resize_shorter}) must be at least the crop "
                f"size {self.height}x{self.width}"
            )

    @property
    def decode_shorter(self) -> int:
        """The shorter side an image needs before the resize: what a reduced JPEG decode keeps."""
        return self.resize_shorter if self.resize_shorter is not None else max(self.height, self.width)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """CHW shape of one preprocessed image."""
        return (self.channels, self.height, self.width)

    @property
    def pil_mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["input_shape"] = list(self.input_shape)
        data["version"] = SPEC_VERSION
        # An absent optional field reads as None (from_dict), and BentoML's model store drops
        # None values from metadata: omitting them keeps every copy of a spec equal.
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        """Rebuild from JSON; a missing or ill-typed field is a user-facing error.

        A spec without ``version`` is version 1 (written before crops existed) and loads as
        a plain resize; a version newer than this code refuses rather than guessing.
        """
        version = data.get("version", 1) if isinstance(data, dict) else None
        if version not in range(1, SPEC_VERSION + 1):
            raise SlimserveError(
                f"preprocess spec version {version!r} is not supported (this slimserve reads 1..{SPEC_VERSION}); "
                "upgrade slimserve"
            )
        try:
            shorter = data.get("resize_shorter")
            return cls(
                height=int(data["height"]),
                width=int(data["width"]),
                channels=int(data["channels"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                interpolation=str(data.get("interpolation", "bilinear")),
                alpha_background=int(data.get("alpha_background", 0)),
                resize_shorter=None if shorter is None else int(shorter),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SlimserveError(f"preprocess spec is malformed: {exc!r}") from None
