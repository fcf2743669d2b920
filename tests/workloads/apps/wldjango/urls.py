import json

import wlweb
from django.http import HttpResponse
from django.urls import path
from django_q.tasks import async_task


def enqueue(request):
    tokens, seconds = wlweb.tokens_for(request.META.get("QUERY_STRING", ""))
    for token in tokens:
        async_task("wljobs.record", token, seconds)
    return HttpResponse(json.dumps({"tokens": tokens}), content_type="application/json")


urlpatterns = [path("enqueue", enqueue)]
