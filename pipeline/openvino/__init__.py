"""OpenVINO IR: base IR, compressed variants, NPU-ready IR, their inspection and validation (openvino_genai)."""
