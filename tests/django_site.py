"""A one-module Django project served through its ASGI handler.

Settings, URLs and views live here so that ``tests.django_site:application``
is all the gateway needs. Django >= 4 maps ASGI ``root_path`` to SCRIPT_NAME,
so ``reverse()`` includes the prefix the gateway was given with --root-path.
"""

from __future__ import annotations

import json
import os

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()

from django.core.asgi import get_asgi_application
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path, reverse
from django.views.decorators.csrf import csrf_exempt


def item(request: HttpRequest, item_id: int) -> HttpResponse:
    return JsonResponse(
        {
            "item_id": item_id,
            "url": reverse("item", args=[item_id]),
            "script_name": request.META.get("SCRIPT_NAME", ""),
            "path_info": request.path_info,
            "pid": os.getpid(),
        }
    )


@csrf_exempt
def create(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(status=405)
    return JsonResponse(
        {"created": json.loads(request.body), "length": len(request.body)}, status=201
    )


urlpatterns = [
    path("items/<int:item_id>", item, name="item"),
    path("items", create),
]

application = get_asgi_application()
