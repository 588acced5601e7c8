"""Data layer: VLGuard records and views, LLaVA conversations, images, forget/retain sets, mining, fetching.

Importing this package is cheap (no torch); the submodules are imported on demand.
"""

from unmirage.data.vlguard import SUBSETS, Sample, VLGuardFile, load_samples, load_vlguard

__all__ = ["SUBSETS", "Sample", "VLGuardFile", "load_samples", "load_vlguard"]
