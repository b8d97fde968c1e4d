"""Production: apply a policy (prune, fine-tune, shrink), pickle-free save/load, ONNX/TorchScript/int8 exports."""
