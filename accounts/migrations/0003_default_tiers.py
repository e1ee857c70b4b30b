"""Free, Member and Pro: starting numbers that admins change in the admin."""

from decimal import Decimal

from django.db import migrations

TIERS = [
    {
        "slug": "free", "name": "Free", "rank": 0, "is_default": True,
        "welcome_grant": Decimal("20"), "grant_amount": Decimal("5"), "grant_period": "daily",
        "max_side": 1024, "max_pixels": 1024 * 1024, "max_steps": 50, "max_images": 4,
        "max_unfinished_jobs": 2, "priority_weight": 1,
    },
    {
        "slug": "member", "name": "Member", "rank": 10, "is_default": False,
        "welcome_grant": Decimal("0"), "grant_amount": Decimal("500"), "grant_period": "monthly",
        "max_side": 1536, "max_pixels": 1536 * 1536, "max_steps": 100, "max_images": 8,
        "max_unfinished_jobs": 4, "priority_weight": 3,
    },
    {
        "slug": "pro", "name": "Pro", "rank": 20, "is_default": False,
        "welcome_grant": Decimal("0"), "grant_amount": Decimal("2000"), "grant_period": "monthly",
        "max_side": 2048, "max_pixels": 2048 * 2048, "max_steps": 150, "max_images": 16,
        "max_unfinished_jobs": 8, "priority_weight": 6,
    },
]


def create_tiers(apps, schema_editor):
    MembershipTier = apps.get_model("accounts", "MembershipTier")
    for values in TIERS:
        MembershipTier.objects.get_or_create(slug=values["slug"], defaults=values)


def remove_tiers(apps, schema_editor):
    MembershipTier = apps.get_model("accounts", "MembershipTier")
    MembershipTier.objects.filter(slug__in=[t["slug"] for t in TIERS], accounts=None).delete()


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_credits")]

    operations = [migrations.RunPython(create_tiers, remove_tiers)]
