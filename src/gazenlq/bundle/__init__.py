"""The bundle format, read and written by both sides: ``gazenlq.export`` writes bundles,
``gazenlq.engine`` reads them. Torch-, ONNX- and Numba-free by rule (a test checks the import
graph): the manifest and its verification (``manifest``), the post-processing settings
(``postprocess``), the shape rules both sides must agree on (``shapes``) and the TensorRT
engine files with their sidecars (``trt``)."""

from gazenlq.bundle.manifest import (
    MANIFEST,
    BundleError,
    FileEntry,
    GraphSpec,
    Manifest,
    TensorSpec,
    bundle_file,
    read_manifest,
    verify_bundle,
)
from gazenlq.bundle.postprocess import Method, PostprocessConfig
from gazenlq.bundle.shapes import level_sizes, pad_to

__all__ = ["MANIFEST", "BundleError", "FileEntry", "GraphSpec", "Manifest", "Method",
           "PostprocessConfig", "TensorSpec", "bundle_file", "level_sizes", "pad_to",
           "read_manifest", "verify_bundle"]
