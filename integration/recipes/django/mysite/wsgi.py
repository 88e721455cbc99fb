# mysite/wsgi.py
import os

from django.core.wsgi import get_wsgi_application
from process_utilization import ProcessUtilization
from raindrops_wsgi import RaindropsMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = RaindropsMiddleware(ProcessUtilization(get_wsgi_application()))
