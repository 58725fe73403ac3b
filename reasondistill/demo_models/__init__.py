"""Demo models built from scratch: tokenizer, Qwen2 factory, teacher build."""
