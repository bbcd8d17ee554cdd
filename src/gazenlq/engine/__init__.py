"""The search engine (issue 7): bundles run by onnxruntime / TensorRT over feature stores.

Imports no torch, by rule: numpy, zarr, onnxruntime, tokenizers and numba only.
"""
