"""`python manage.py grant_credits`: give this period's tier grants (safe to run repeatedly)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from accounts.grants import grant_periodic_credits


class Command(BaseCommand):
    help = "Grant each account its tier's periodic credits once per period; run it from cron."

    def handle(self, *args: Any, **options: Any) -> None:
        granted = grant_periodic_credits()
        self.stdout.write(f"{granted} grant(s) written")
