"""The Starlette side of `make bench`: the same routes as plugins/hello.

    GET /      200 "Hello, World!"
    GET /task  the same, plus one no-op BackgroundTask with a 64-byte payload

Run by bench/run under uvicorn (Debian's python3-starlette and
python3-uvicorn).  The task is an `async def`, so Starlette awaits it on
the event loop after the response is sent instead of handing it to a
thread pool: the cheapest background task Starlette offers.
"""
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import PlainTextResponse
from starlette.routing import Route

PAYLOAD = b"a 64-byte payload for the no-op benchmark task................."
completed = 0


async def noop(payload: bytes) -> None:
    global completed
    completed += 1


async def hello(request):
    return PlainTextResponse("Hello, World!")


async def task(request):
    return PlainTextResponse("Hello, World!", background=BackgroundTask(noop, PAYLOAD))


app = Starlette(routes=[Route("/", hello), Route("/task", task)])
