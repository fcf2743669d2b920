from django.contrib import admin
from django.contrib.flatpages import views as flatpage_views
from django.urls import include, path
from rest_framework import routers
from rest_framework.authtoken import views as token_views

from workload.shop import views

router = routers.DefaultRouter()
router.register("categories", views.CategoryViewSet)
router.register("products", views.ProductViewSet)
router.register("orders", views.OrderViewSet)
router.register("jobs", views.JobViewSet)

urlpatterns = [
    path("admin/doc/", include("django.contrib.admindocs.urls")),
    path("admin/", admin.site.urls),
    path("api/", include(router.urls)),
    path("api/token/", token_views.obtain_auth_token),
    path("api-auth/", include("rest_framework.urls")),
    path("health/", views.health),
    path("pages/<path:url>", flatpage_views.flatpage),
]
