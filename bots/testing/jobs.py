"""Job functions for scheduler tests (importable, as every scheduled job must be)."""

from __future__ import annotations

from bots.plugins.jobs import JobContext


async def post_text(ctx: JobContext) -> str | None:
    """Posts ``options["text"]``, with ``{when}`` replaced by the run's local time; no text skips."""
    text = str(ctx.options.get("text", ""))
    if not text:
        ctx.skip("no text")
        return None
    return text.replace("{when}", ctx.scheduled_at.strftime("%Y-%m-%d %H:%M %Z"))


async def ask_the_model(ctx: JobContext) -> str | None:
    """Posts whatever the model answers to ``options["prompt"]`` (regenerate gives a new text)."""
    answer = await ctx.llm.ainvoke(str(ctx.options.get("prompt", "Say something.")))
    return str(answer.content)
