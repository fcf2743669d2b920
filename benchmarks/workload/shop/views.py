from django.http import JsonResponse
from rest_framework import filters, permissions, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from . import models, serializers


class CategoryViewSet(viewsets.ModelViewSet):
    queryset = models.Category.objects.all()
    serializer_class = serializers.CategorySerializer


class ProductViewSet(viewsets.ModelViewSet):
    queryset = models.Product.objects.select_related("category")
    serializer_class = serializers.ProductSerializer
    filter_backends = [filters.SearchFilter, filters.OrderingFilter]
    search_fields = ["sku", "name"]
    ordering_fields = ["price", "stock"]

    @action(detail=True, methods=["post"], permission_classes=[permissions.IsAdminUser])
    def restock(self, request, pk=None):
        product = self.get_object()
        product.stock += int(request.data.get("quantity", 0))
        product.save(update_fields=["stock"])
        return Response({"stock": product.stock})


class OrderViewSet(viewsets.ModelViewSet):
    queryset = models.Order.objects.prefetch_related("lines")
    serializer_class = serializers.OrderSerializer
    permission_classes = [permissions.IsAuthenticated]


class JobViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = models.Job.objects.all()
    serializer_class = serializers.JobSerializer


def health(request):
    return JsonResponse({"ok": True})
