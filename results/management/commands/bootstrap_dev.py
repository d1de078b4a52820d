"""Create the development admin and API token once, and say where everything is."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from results.models import Membership, Tenant


class Command(BaseCommand):
    help = "Development only: create user 'admin' (superuser) with an API token, and print URLs."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", default="8000")

    def handle(self, *args: Any, host: str, port: str, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError("bootstrap_dev refuses to run with TERMINUS_ENV=production")
        credentials = settings.VAR_DIR / "dev-credentials.txt"
        user_model = get_user_model()
        user = user_model.objects.filter(username="admin").first()
        if user is None or not credentials.exists():
            password = secrets.token_urlsafe(12)
            user = user or user_model(username="admin", email="admin@localhost")
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
            credentials.write_text(password + "\n")
            credentials.chmod(0o600)
        password = credentials.read_text().strip()
        tenant, _ = Tenant.objects.get_or_create(name="default")
        Membership.objects.get_or_create(user=user, defaults={"tenant": tenant})
        token, _ = Token.objects.get_or_create(user=user)
        base = f"http://{host}:{port}"
        broker = settings.CELERY_BROKER_URL.split("://", 1)[0]
        database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"Terminus (development) - database: {database}, broker: {broker}",
                    f"  API:    {base}/api/jobs/   (OpenAPI schema: {base}/api/schema/)",
                    f"  Admin:  {base}/admin/   user: admin   password: {password}",
                    f"  Token:  {token.key}",
                    f'  Try:    curl -s -X POST {base}/api/jobs/ -H "Authorization: Token {token.key}" '
                    '-H "Content-Type: application/json" '
                    '-d \'{"type": "diagnostics.sleep", "payload": {"seconds": 2}}\'',
                    "",
                ]
            )
        )
