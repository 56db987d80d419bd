"""MCP at ``/mcp``: the gateway's serving endpoints as tools for AI agents.

``McpMount`` is what the gateway mounts (``routes()``), binds to its outermost ASGI app (``bind()``,
through which tool calls travel as ordinary queries) and closes on shutdown (``aclose()``). The SDK
itself is imported on the first request (``router.mcp.server``).
"""

from router.mcp.mount import MCP_PATH, McpMount

__all__ = ["MCP_PATH", "McpMount"]
