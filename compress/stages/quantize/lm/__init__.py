"""The causal-LM quantizers, one module per format (ONNX MatMulNBits, OpenVINO through NNCF, llama.cpp's GGUF
types, ExecuTorch through torchao) and quantization-aware INT4: each imports only neutral modules, never another
format's module here."""
