"""Which variant to deploy: the Pareto front of accuracy vs throughput and the recommendation."""

from collections.abc import Sequence
from typing import Any


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (both maximised), by ascending x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def recommend(
    rows: Sequence[dict[str, Any]], reference_accuracy: float, max_drop_points: float
) -> dict[str, Any] | None:
    """The fastest row whose accuracy is within ``max_drop_points`` of the reference.

    Rows without an accuracy cannot be judged and are never recommended.
    """
    eligible = [
        row
        for row in rows
        if row.get("accuracy") is not None
        and (reference_accuracy - row["accuracy"]) * 100.0 <= max_drop_points + 1e-9
    ]
    return max(eligible, key=lambda row: row["images_per_s"], default=None)
