# mysite/urls.py
import time

from django.http import HttpResponse
from django.urls import path


def index(request):
    return HttpResponse("hello from Django\n", content_type="text/plain")


def report(request):
    time.sleep(0.5)  # a slow query: the worker is busy, its CPU idle
    return HttpResponse("report ready\n", content_type="text/plain")


urlpatterns = [path("", index), path("report", report)]
