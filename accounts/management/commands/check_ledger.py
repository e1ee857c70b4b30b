"""`python manage.py check_ledger`: verify the credit ledger; exits 1 on any violation."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.ledger import find_violations


class Command(BaseCommand):
    help = (
        "Verify every balance equals the sum of its entries, nothing is negative, each job holds "
        "and settles at most once, and holds add up. Exits non-zero on any violation."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        violations = find_violations()
        for violation in violations:
            self.stderr.write(str(violation))
        if violations:
            raise CommandError(f"{len(violations)} ledger violation(s)")
        self.stdout.write(self.style.SUCCESS("Ledger OK"))
