"""ONNX Runtime GenAI family: the model builder export, its structural checks, validation, and the Windows DML compat check."""
