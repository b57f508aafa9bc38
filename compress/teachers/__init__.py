"""Teachers: loading fine-tuned models (checkpoints, programs, model files) as the FP32 reference."""
