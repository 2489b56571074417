"""The LLM engine: continuous batching of text generation over Hugging Face models."""
