"""Deployment: ONNX export, TensorRT engines, torch-tensorrt, and runtime backends."""
