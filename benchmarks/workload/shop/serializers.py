from rest_framework import serializers

from . import models


class CategorySerializer(serializers.ModelSerializer):
    class Meta:
        model = models.Category
        fields = ["id", "name", "slug", "parent"]


class ProductSerializer(serializers.ModelSerializer):
    category = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = models.Product
        fields = ["id", "sku", "name", "description", "category", "price", "stock", "active",
                  "attributes", "created", "updated"]


class OrderLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = models.OrderLine
        fields = ["product", "quantity", "unit_price"]


class OrderSerializer(serializers.ModelSerializer):
    lines = OrderLineSerializer(many=True, read_only=True)

    class Meta:
        model = models.Order
        fields = ["id", "customer", "status", "shipping_address", "created", "total", "lines"]


class JobSerializer(serializers.ModelSerializer):
    class Meta:
        model = models.Job
        fields = "__all__"
