"""ONNX Runtime GenAI: the model builder export, structural checks, validation, the Windows DML compat check."""
