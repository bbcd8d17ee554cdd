"""Checkpoint -> validated ONNX bundle / TensorRT engines (issue 6). Needs torch and onnx."""
