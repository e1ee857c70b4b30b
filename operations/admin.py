"""Admin registrations that need every app below: the members' admin shows jobs (generation)
and publications (gallery)."""

from __future__ import annotations

from django.contrib import admin

from accounts.models import User
from operations.member_admin import MemberAdmin

admin.site.register(User, MemberAdmin)
