"""Knowledge: document collections, ingestion, hybrid (keyword + dense) retrieval with citations.

Knows nothing of chats: the agent reaches it through the retrieval seam.
"""
