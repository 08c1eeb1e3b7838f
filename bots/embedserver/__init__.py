"""The embedding service: OpenAI-compatible ``/v1/embeddings`` with dynamic micro-batching,
so one GPU (or CPU) box serves many bot hosts."""
