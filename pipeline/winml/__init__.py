"""Windows ML packages: an ONNX Runtime GenAI folder whose one EPContext node wraps an OpenVINO IR (OpenVINO EP)."""
