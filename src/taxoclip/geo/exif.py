"""Coordinates from a photo's EXIF GPS block, so phone photos need no location column."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["exif_location"]

_GPS_IFD = 0x8825
_LAT_REF, _LAT, _LON_REF, _LON = 1, 2, 3, 4


def exif_location(image: "str | Path | Image.Image") -> tuple[float, float] | None:
    """(latitude, longitude) in decimal degrees from EXIF GPS, or None when absent or unreadable.

    Never raises on a bad file: a location is a hint for the range prior, and a photo without
    one is still identified. (0, 0) counts as absent: it is what cameras write without a fix.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(image, Image.Image):
            gps = image.getexif().get_ifd(_GPS_IFD)
        else:
            with Image.open(image) as im:  # reads the header only, not the pixels
                gps = im.getexif().get_ifd(_GPS_IFD)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, KeyError, TypeError):
        return None
    if not gps:
        return None
    lat = _degrees(gps.get(_LAT), gps.get(_LAT_REF), "S")
    lon = _degrees(gps.get(_LON), gps.get(_LON_REF), "W")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None
    return lat, lon


def _degrees(value: Any, ref: Any, negative: str) -> float | None:
    """EXIF (degrees, minutes, seconds) rationals and an N/S/E/W reference -> signed degrees."""
    if value is None:
        return None
    try:
        parts = [float(v) for v in (value if isinstance(value, (tuple, list)) else (value,))]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not parts or len(parts) > 3 or any(math.isnan(p) or math.isinf(p) for p in parts):
        return None
    degrees = sum(p / 60 ** i for i, p in enumerate(parts))
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    if str(ref or "").strip().upper().startswith(negative):
        degrees = -degrees
    return degrees
