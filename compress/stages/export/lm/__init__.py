"""The causal-LM exporters, one module per format (ONNX with its KV cache, a stateful OpenVINO IR, GGUF, an
ExecuTorch program): each imports only neutral modules, never another format's module here."""
