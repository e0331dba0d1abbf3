"""Inference: the prediction loop, classify, evaluate and its report, ONNX export and runtimes."""
