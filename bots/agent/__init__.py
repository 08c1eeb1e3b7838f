"""The agent core: persona, memory, prompt assembly and LLM providers."""
