"""OpenVINO IR family: base IR, compressed variants, NPU-ready IR, their inspection and validation with openvino_genai."""
