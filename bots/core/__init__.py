"""The core: event model, host, pipeline, permissions, storage. Imports nothing outside itself."""
