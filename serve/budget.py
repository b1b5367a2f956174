"""Per-request memory budgets, checked before any work starts.

The memory a request costs grows with the full-size masks it makes: pixels x masks x bytes per mask pixel.
``limits.mask_bytes_per_pixel`` (default 6) is measured, not guessed: one /v1/segment with 16 boxes x 4
outputs on a 12 MP image raised the decoder replica by 4.35 GB = 768 M mask pixels x 5.7 bytes (float32
upsampling buffers, the boolean mask, the RLE temporaries). A request whose estimate is over
``limits.memory_budget_bytes`` (default 2 GB) is refused with 413, naming both figures; nothing is decoded,
encoded or allocated for it. Budgets are per request; the decoder also keeps each batched decoder call under
the budget (:func:`split_by_budget`), so requests that pass alone cannot add up past it together.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from .codec import RequestError
from .config import LimitsSection

T = TypeVar("T")
IMAGE_BYTES_PER_PIXEL = 3  # decoded uint8 RGB


def returned_masks(num_prompts: int, num_outputs: int, select: str) -> int:
    """Full-size masks a /v1/segment request returns: one per prompt, or all ``num_outputs`` with select=all."""
    return num_prompts * (num_outputs if select == "all" else 1)


def segment_bytes(height: int, width: int, masks: int, limits: LimitsSection) -> int:
    """Estimated peak bytes of a /v1/segment request making ``masks`` full-size masks of ``height x width``."""
    return int(height * width * masks * limits.mask_bytes_per_pixel)


def everything_masks_in_flight(generator: dict, mode: str) -> int:
    """Full-size masks one segment-everything decoder call can hold at once: its prompts (``max_proposals``
    RPN boxes, or ``points_per_batch`` grid points) x the outputs kept per prompt. ``mode`` "auto" takes
    the larger of the two modes (the ingress does not know whether the model has an RPN)."""
    from_cfg = lambda key, default: int(generator.get(key, default))  # noqa: E731 - EverythingConfig defaults
    outputs = generator.get("num_outputs")
    rpn = from_cfg("max_proposals", 100) * int(outputs or 1)
    grid = min(from_cfg("points_per_batch", 64), from_cfg("points_per_side", 32) ** 2) * int(outputs or 3)
    return {"rpn": rpn, "grid": grid}.get(mode, max(rpn, grid))


def everything_bytes(sizes: Sequence[tuple[int, int]], masks_in_flight: int, limits: LimitsSection) -> int:
    """Estimated peak bytes of /v1/everything over images of ``sizes`` (H, W): all decoded images, plus the
    largest image's masks in flight (images are segmented one after another)."""
    pixels = [h * w for h, w in sizes]
    return int(sum(pixels) * IMAGE_BYTES_PER_PIXEL + max(pixels, default=0) * masks_in_flight * limits.mask_bytes_per_pixel)


def check_budget(estimate: int, limits: LimitsSection, what: str) -> None:
    """413 when ``estimate`` bytes is over ``limits.memory_budget_bytes``; ``what`` explains the figure."""
    if estimate > limits.memory_budget_bytes:
        raise RequestError(
            f"request needs an estimated {estimate / 1e9:.2f} GB ({what}), over the memory budget of "
            f"{limits.memory_budget_bytes / 1e9:.2f} GB per request (limits.memory_budget_bytes): ask for fewer "
            "prompts or outputs (multimask_select), or send a smaller image", 413)


def check_segment(height: int, width: int, num_prompts: int, num_outputs: int, select: str,
                  limits: LimitsSection) -> int:
    """Check a /v1/segment request; returns its estimate in bytes."""
    masks = returned_masks(num_prompts, num_outputs, select)
    est = segment_bytes(height, width, masks, limits)
    check_budget(est, limits, f"{width}x{height} pixels x {masks} masks x {limits.mask_bytes_per_pixel:g} bytes")
    return est


def check_everything(sizes: Sequence[tuple[int, int]], masks_in_flight: int, limits: LimitsSection) -> int:
    """Check a /v1/everything request over images of ``sizes``; returns its estimate in bytes."""
    est = everything_bytes(sizes, masks_in_flight, limits)
    big = max(sizes, key=lambda s: s[0] * s[1])
    check_budget(est, limits, f"{len(sizes)} image(s), the largest {big[1]}x{big[0]} pixels x {masks_in_flight} masks "
                              f"in flight x {limits.mask_bytes_per_pixel:g} bytes, plus the decoded images")
    return est


def split_by_budget(items: Sequence[T], cost: Callable[[T], int], budget: int) -> list[list[T]]:
    """Consecutive runs of ``items`` whose summed ``cost`` stays within ``budget`` (an item alone may exceed it:
    it was admitted on its own)."""
    runs: list[list[T]] = []
    total = 0
    for it in items:
        c = cost(it)
        if runs and total + c <= budget:
            runs[-1].append(it)
            total += c
        else:
            runs.append([it])
            total = c
    return runs
