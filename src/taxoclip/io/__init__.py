"""Inputs and outputs: finding and decoding images, writing results in the formats users exchange."""
from .images import IMAGE_EXTENSIONS, Batch, ImageLoader, ImageRef, decode_image, find_images

__all__ = ["IMAGE_EXTENSIONS", "Batch", "ImageLoader", "ImageRef", "decode_image", "find_images"]
