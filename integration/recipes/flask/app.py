# app.py
import time

from flask import Flask
from process_utilization import ProcessUtilization
from raindrops_wsgi import RaindropsMiddleware

app = Flask(__name__)


@app.get("/")
def index():
    return "hello from Flask\n"


@app.get("/report")
def report():
    time.sleep(0.5)  # a slow query: the thread waits, the worker is busy
    return "report ready\n"


app.wsgi_app = RaindropsMiddleware(ProcessUtilization(app.wsgi_app))
