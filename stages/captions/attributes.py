"""An offline, deterministic stand-in for LLaVA: a caption built from measured image attributes.

Recipe (numpy/scipy only, the same pixels always give the same words):
1. Split the pixels into foreground and background: Otsu threshold on luminance; the side that
   covers most of the image border is the background.
2. Name the median colours of both parts (nearest colour of a small fixed palette).
3. Measure the foreground: bounding-box size and aspect, centre of mass (position), slant from
   second moments, stroke width (2 x area / edge length), closed loops (background regions that
   do not touch the border), mirror symmetry (overlap with its own flip), ink coverage.
4. Measure the whole image: brightness (mean luminance) and contrast (foreground vs background).
5. Put the words into LLaVA-like sentences that name the subject (the class prompt).

Every attribute is quantised into a few words, so captions vary within a class (stroke width,
slant, loops, position ...) while staying about the same thing, which is what VLCP's text
prototypes need (docs/methods/vlcp.md#captions).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

VERSION = "attributes-v1"  # the captioner id recorded in captions.jsonl; bump when the words change

PALETTE = {
    "black": (0, 0, 0), "dark gray": (64, 64, 64), "gray": (128, 128, 128), "light gray": (192, 192, 192),
    "white": (255, 255, 255), "red": (200, 30, 30), "dark red": (128, 0, 0), "orange": (255, 140, 0),
    "yellow": (240, 220, 40), "olive": (128, 128, 0), "green": (40, 160, 40), "dark green": (0, 90, 0),
    "teal": (0, 128, 128), "cyan": (0, 220, 220), "sky blue": (135, 190, 235), "blue": (30, 60, 200),
    "navy": (0, 0, 110), "purple": (120, 40, 150), "magenta": (220, 0, 220), "pink": (255, 170, 190),
    "brown": (130, 80, 30), "beige": (220, 200, 160),
}
_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float64)


def colour_name(rgb: np.ndarray) -> str:
    """Nearest palette colour (Euclidean in RGB; ties go to the earlier palette entry)."""
    return _NAMES[int(np.argmin(((_RGB - rgb) ** 2).sum(1)))]


def luminance(image: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 → float H x W in [0, 255] (ITU-R BT.601 weights)."""
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def otsu_threshold(lum: np.ndarray) -> int:
    """The level t maximising the between-class variance of {lum <= t} and {lum > t}."""
    hist = np.bincount(np.round(lum).astype(np.int64).ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    w = np.cumsum(p)  # weight of the dark class
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w - mu) ** 2 / (w * (1 - w))
    between[~np.isfinite(between)] = -1  # levels where one class is empty
    return int(np.argmax(between))


def foreground_mask(lum: np.ndarray) -> np.ndarray:
    """Otsu split; the side holding most of the border pixels is the background."""
    bright = lum > otsu_threshold(lum)
    border = np.concatenate([bright[0], bright[-1], bright[1:-1, 0], bright[1:-1, -1]])
    return ~bright if border.mean() > 0.5 else bright


def count_loops(mask: np.ndarray) -> int:
    """Closed loops = background regions (4-connected) that do not touch the border; specks ignored."""
    labels, n = ndimage.label(~mask)
    if n == 0:
        return 0
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    min_size = max(1, round(0.004 * mask.size))  # 1 px at 16 x 16, 4 px at 32 x 32
    return sum(1 for k in range(1, n + 1) if k not in edge and sizes[k] >= min_size)


def mirror_overlap(box: np.ndarray, axis: int) -> float:
    """Intersection over union of a (cropped) mask and its mirror image along `axis`."""
    flipped = np.flip(box, axis)
    return float((box & flipped).sum() / max((box | flipped).sum(), 1))


def measure(image: np.ndarray) -> dict:
    """The raw numbers behind a caption (all scale-free: fractions of the image or of the object)."""
    lum = luminance(image)
    h, w = lum.shape
    stats = {"brightness": lum.mean() / 255, "uniform": bool(lum.max() - lum.min() < 8)}
    if stats["uniform"]:
        stats["background"] = colour_name(np.median(image.reshape(-1, 3), 0))
        return stats
    mask = foreground_mask(lum)
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box_h, box_w = bottom - top, right - left
    dy, dx = ys - ys.mean(), xs - xs.mean()
    edges = (mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum()
    box = mask[top:bottom, left:right]
    stats.update(
        foreground=colour_name(np.median(image[mask], 0)),
        background=colour_name(np.median(image[~mask], 0)),
        contrast=abs(lum[mask].mean() - lum[~mask].mean()) / 255,
        extent=box_h * box_w / (h * w),  # bounding box / image
        coverage=float(mask.mean()),  # foreground pixels / image
        aspect=box_h / box_w,
        # centre of mass, as offsets from the image centre in fractions of the side (y grows downwards)
        offset_y=ys.mean() / max(h - 1, 1) - 0.5,
        offset_x=xs.mean() / max(w - 1, 1) - 0.5,
        # x ≈ slant * y + c: > 0 means the bottom sits right of the top, i.e. the top leans left
        slant=float((dx * dy).mean() / max((dy * dy).mean(), 1e-9)),
        # a stroke of width s and length L has area s·L and about 2·L edges: s ≈ 2·area / edges
        stroke=2 * mask.sum() / max(edges, 1) / max(box_h, box_w),
        loops=count_loops(mask),
        symmetry_lr=mirror_overlap(box, 1),
        symmetry_tb=mirror_overlap(box, 0),
    )
    return stats


def level(value: float, cuts: list[float], words: list[str]) -> str:
    """Quantise: words[i] for the first cut the value is below, the last word above them all."""
    for cut, word in zip(cuts, words):
        if value < cut:
            return word
    return words[-1]


def article(subject: str) -> str:
    if subject.lower().startswith(("a ", "an ", "the ")):
        return subject
    return ("an " if subject[:1].lower() in "aeiou" else "a ") + subject


def position(offset_y: float, offset_x: float) -> str:
    """Where the centre of mass sits: 'centred in the frame', 'slightly above and to the left of the centre', ..."""
    def degree(offset: float) -> str:
        return level(abs(offset), [0.04, 0.1], ["", "slightly ", "well "])

    parts = []
    if degree(offset_y):
        parts.append(degree(offset_y) + ("above" if offset_y < 0 else "below"))
    if degree(offset_x):
        parts.append(degree(offset_x) + ("to the left of" if offset_x < 0 else "to the right of"))
    if not parts:
        return "centred in the frame"
    return "placed " + " and ".join(parts) + " the centre"


def symmetry(lr: float, tb: float) -> str:
    def degree(overlap: float) -> str:
        return level(overlap, [0.5, 0.65], ["", "roughly", "highly"])

    across, down = degree(lr), degree(tb)
    if across and across == down:
        return f"{across} symmetric both from left to right and from top to bottom"
    kept = [f"{word} symmetric {axis}" for word, axis in [(across, "from left to right"), (down, "from top to bottom")]
            if word]
    return " and ".join(kept) if kept else "clearly asymmetric"


def coverage_words(fraction: float) -> str:
    """The nearest simple fraction in words."""
    fractions = [(0.05, "a twentieth"), (0.1, "a tenth"), (0.2, "a fifth"), (0.25, "a quarter"),
                 (1 / 3, "a third"), (0.4, "two fifths"), (0.5, "half"), (2 / 3, "two thirds"),
                 (0.75, "three quarters"), (0.9, "nearly all")]
    return min(fractions, key=lambda f: abs(f[0] - fraction))[1]


def describe(image: np.ndarray, subject: str) -> str:
    """uint8 H x W x 3 image + its class prompt (e.g. 'handwritten digit 3') → a caption."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 H x W x 3 image, got {image.dtype} {image.shape}")
    s = measure(image)
    brightness = level(s["brightness"], [0.15, 0.3, 0.45, 0.65],
                       ["very dark", "dark", "of medium brightness", "bright", "very bright"])
    if s["uniform"]:
        return (f"The image shows {article(subject)}, but it is hard to make out: the whole picture is a nearly "
                f"uniform {s['background']}. The image is {brightness} overall with almost no contrast.")

    size = level(s["extent"], [0.2, 0.45, 0.7], ["small", "medium-sized", "large", "very large"])
    shape = level(s["aspect"], [0.6, 0.85, 1.2, 1.7],
                  ["wide and flat", "wider than it is tall", "roughly square", "taller than it is wide",
                   "tall and narrow"])
    slant = level(abs(s["slant"]), [0.08, 0.2], ["", "slightly ", "strongly "])
    slant = f"{slant}slanted to the {'left' if s['slant'] > 0 else 'right'}" if slant else "standing upright"
    stroke = level(s["stroke"], [0.17, 0.23, 0.3], ["thin", "medium-width", "thick", "very thick"])
    loops = ["no closed loops", "one closed loop", "two closed loops"][s["loops"]] if s["loops"] < 3 \
        else f"{s['loops']} closed loops"
    contrast = level(s["contrast"], [0.25, 0.5], ["low", "moderate", "high"])
    return (f"The image shows {article(subject)} in {s['foreground']} against a {s['background']} background. "
            f"The {subject} is {size}, {shape}, {position(s['offset_y'], s['offset_x'])} and {slant}. "
            f"It is drawn with {stroke} strokes that cover about {coverage_words(s['coverage'])} of the image "
            f"and form {loops}. The shape is {symmetry(s['symmetry_lr'], s['symmetry_tb'])}. "
            f"The image is {brightness} overall with {contrast} contrast.")
