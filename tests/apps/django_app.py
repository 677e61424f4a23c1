import meshlens.auto  # noqa: F401  (the one line a service adds)
import logging

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import path


settings.configure(
    DEBUG=False,
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="test-only",
    MIDDLEWARE=[],
)
log = logging.getLogger("django_app")


def health(request):
    return HttpResponse("ok")


def item(request, item_id: int):
    log.warning("fetched item %d", item_id)
    return JsonResponse({"id": item_id})


urlpatterns = [path("health", health), path("items/<int:item_id>", item)]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
