"""Tenants and memberships: who acts for which customer. Superusers only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin

from results.models import Membership, Tenant

if TYPE_CHECKING:
    from django.http import HttpRequest


class SuperuserOnlyAdmin(admin.ModelAdmin):
    """Who belongs to which tenant decides what everyone sees: only superusers see or change it.

    Model permissions are not enough: staff acting for a tenant with ``change_membership`` could
    move themselves into another tenant, and ``view_tenant`` would list every customer.
    """

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser


@admin.register(Tenant)
class TenantAdmin(SuperuserOnlyAdmin):
    list_display = ("name", "created_at")
    search_fields = ("name",)


@admin.register(Membership)
class MembershipAdmin(SuperuserOnlyAdmin):
    list_display = ("user", "tenant")
    list_select_related = ("user", "tenant")
    search_fields = ("user__username", "tenant__name")
    raw_id_fields = ("user", "tenant")
