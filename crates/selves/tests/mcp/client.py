"""Drives `selves mcp` with the official MCP Python SDK's stdio client.

Usage: client.py SELVES_BINARY CALLS_JSON
CALLS_JSON is a list of [tool, arguments] pairs (or [tool, arguments, n]
to call it n times, for latency figures). Prints one JSON document: the
server's name, its tools, and each call's text, error flag and latencies.
The environment (SELVES_HOME, HOME) is passed on to the server.
"""

import asyncio
import json
import os
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def field(obj, *names):
    for n in names:
        if hasattr(obj, n):
            return getattr(obj, n)
    return None


async def main() -> None:
    binary, calls = sys.argv[1], json.loads(sys.argv[2])
    env = {k: os.environ[k] for k in ("SELVES_HOME", "HOME", "PATH") if k in os.environ}
    params = StdioServerParameters(command=binary, args=["mcp"], env=env)
    out = {"calls": []}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            info = field(init, "server_info", "serverInfo")
            out["server"] = info.name
            out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
            for call in calls:
                name, args = call[0], call[1]
                times = call[2] if len(call) > 2 else 1
                latencies = []
                for _ in range(times):
                    t = time.perf_counter()
                    result = await session.call_tool(name, args)
                    latencies.append((time.perf_counter() - t) * 1000)
                text = "".join(c.text for c in result.content if getattr(c, "type", "") == "text")
                out["calls"].append({
                    "tool": name,
                    "error": bool(field(result, "is_error", "isError")),
                    "text": text,
                    "ms": latencies,
                })
    print(json.dumps(out))


asyncio.run(main())
