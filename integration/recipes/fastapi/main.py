# main.py
import asyncio

from fastapi import FastAPI
from process_utilization.asgi import ProcessUtilization
from raindrops_asgi import RaindropsMiddleware

app = FastAPI()


@app.get("/")
async def index():
    return {"hello": "FastAPI"}


@app.get("/report")
async def report():
    await asyncio.sleep(0.5)  # a slow query: the loop waits, the worker is busy
    return {"report": "ready"}


# The last added is the outermost: raindrops sees every request first.
app.add_middleware(ProcessUtilization)
app.add_middleware(RaindropsMiddleware)
