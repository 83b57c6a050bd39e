"""ONNX import: one op table from ONNX op name to handler, graph bookkeeping, spatial ops."""
