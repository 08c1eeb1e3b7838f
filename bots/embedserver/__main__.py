"""``python -m bots.embedserver``: the service without the rest of the CLI (for GPU boxes that
carry only the server's dependencies)."""

from __future__ import annotations

import argparse
import logging
import os

from bots.embedserver.server import serve


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible embedding service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-batch", type=int, default=None, help="default: 64 on CUDA, 4 on CPU")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-queue", type=int, default=4096)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    serve(
        args.host, args.port, args.model, args.device,
        api_key=os.environ.get("BOTS_EMBED_API_KEY") or None,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
    )  # fmt: skip


if __name__ == "__main__":
    main()
