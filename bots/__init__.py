"""Persona chat bots in group chats: one host, many bots, many channels."""

__version__ = "0.1.0"
