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


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image is turned into the model's input tensor.

    Steps, in order: apply EXIF orientation; flatten transparency onto
    ``alpha_background``; convert to ``L`` (1 channel) or ``RGB`` (3 channels); resize to
    ``height`` x ``width`` with ``interpolation`` if the size differs; scale to [0, 1];
    subtract ``mean`` and divide by ``std`` per channel; lay out as CHW float32.
    """

    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    alpha_background: int = 0

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
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        """Rebuild from JSON; a missing or ill-typed field is a user-facing error."""
        try:
            return cls(
                height=int(data["height"]),
                width=int(data["width"]),
                channels=int(data["channels"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                interpolation=str(data.get("interpolation", "bilinear")),
                alpha_background=int(data.get("alpha_background", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SlimserveError(f"preprocess spec is malformed: {exc!r}") from None
