from django.contrib import admin

from . import models


class OrderLineInline(admin.TabularInline):
    model = models.OrderLine
    extra = 0


@admin.register(models.Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "parent")
    prepopulated_fields = {"slug": ("name",)}


@admin.register(models.Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("sku", "name", "category", "price", "stock", "active")
    list_filter = ("active", "category")
    search_fields = ("sku", "name")


@admin.register(models.Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "customer", "status", "total", "created")
    list_filter = ("status",)
    inlines = [OrderLineInline]


admin.site.register(models.Customer)
admin.site.register(models.Address)
admin.site.register(models.Job)
