"""The knowledge base from the app's config, without importing the rest of the host (a cold
``bots search`` imports only this, the config and what the search itself needs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bots.core.config import AppConfig, Secrets

if TYPE_CHECKING:
    from bots.knowledge.store import KnowledgeBase


def build_knowledge(config: AppConfig, secrets: Secrets | None = None) -> KnowledgeBase:
    """The host's knowledge base (imports the heavy retrieval stack only when called)."""
    from bots.knowledge.embeddings import Embedder, HttpEmbedder, make_embedder
    from bots.knowledge.store import FusionWeights, KnowledgeBase

    settings = config.knowledge
    embedder: Embedder
    if settings.embedding_url:
        key = (secrets or Secrets()).get(settings.embedding_api_key_env)
        embedder = HttpEmbedder(
            settings.embedding_url,
            model=settings.embedding_model,
            api_key=key.get_secret_value() if key else None,
        )
    else:
        cache_dir = config.data_dir / "knowledge" / "cache"
        embedder = make_embedder(settings.embedding_model, device=settings.device, cache_dir=cache_dir)
    weights = FusionWeights(
        dense_latin=settings.dense_weight_latin,
        dense_cjk=settings.dense_weight_cjk,
        entities=settings.entity_weight,
        cross_slots=settings.cross_slots,
        cross_first=settings.cross_first,
        translated=settings.dictionary_weight,
    )
    token = (secrets or Secrets()).get(settings.chroma_token_env) if settings.chroma_url else None
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else None
    return KnowledgeBase(
        config.knowledge_dir,
        config.data_dir,
        embedder,
        weights,
        chroma_url=settings.chroma_url,
        chroma_headers=headers,
    )
