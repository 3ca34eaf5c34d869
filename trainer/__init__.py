"""PyTorch side of the pipeline: MNIST data, the model, training and export to safetensors.

Data flows trainer/ -> ``models/model.safetensors`` -> wasm-infer/ (Rust, burn) -> web/.
"""
