"""Reading and writing daskcal products (Zarr, FITS)."""

from daskcal.io._atomic import atomic_path, save_dataset, save_products

__all__ = ["atomic_path", "save_dataset", "save_products"]
