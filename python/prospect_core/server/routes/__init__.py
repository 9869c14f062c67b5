"""The HTTP routes, one router per concern: chat completions, video sessions, health and model listing."""

from prospect_core.server.routes import chat, health, sessions

ROUTERS = (health.router, chat.router, sessions.router)

__all__ = ["ROUTERS"]
