"""``manage.py create_token <username> [--tenant NAME] [--staff] [--create]``: an API token for a user."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from rest_framework.authtoken.models import Token

from results.models import Membership, Tenant


class Command(BaseCommand):
    help = (
        "Print the API token of a user (created on first use). --create makes the user (no usable "
        "password), --tenant NAME puts it in that tenant (created if missing), --staff makes it staff."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--tenant", metavar="NAME", help="Tenant the user acts for (created if missing).")
        parser.add_argument("--staff", action="store_true", help="Make the user staff (sees every tenant's jobs).")
        parser.add_argument("--create", action="store_true", help="Create the user if it does not exist.")

    def handle(self, *args: Any, username: str, tenant: str | None, staff: bool, create: bool, **options: Any) -> None:
        User = get_user_model()
        username = username.strip()
        if not username:
            raise CommandError("username must not be empty")
        if tenant is not None and not tenant.strip():
            raise CommandError("--tenant must not be empty")
        with transaction.atomic():
            user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
            if user is None:
                if not create:
                    raise CommandError(f"no user {username!r}; pass --create to create it")
                user = User(**{User.USERNAME_FIELD: username})
                user.set_unusable_password()
                user.save()
                self.stderr.write(f"created user {username!r}")
            if staff and not user.is_staff:
                user.is_staff = True
                user.save(update_fields=["is_staff"])
                self.stderr.write(f"{username!r} is now staff")
            if tenant is not None:
                tenant_obj, made = Tenant.objects.get_or_create(name=tenant.strip())
                if made:
                    self.stderr.write(f"created tenant {tenant_obj.name!r}")
                Membership.objects.update_or_create(user=user, defaults={"tenant": tenant_obj})
            token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
