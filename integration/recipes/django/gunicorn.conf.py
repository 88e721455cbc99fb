# gunicorn.conf.py
from raindrops_exporter.gunicorn import on_exit, when_ready

bind = "127.0.0.1:8000"
workers = 4
