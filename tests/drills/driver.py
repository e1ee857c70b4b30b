"""What the drills ask of the platform from outside: `python -m tests.drills.driver CMD ...`.

Run with the drill's environment (its own SQLite file, models folder and Redis), like any management
command: `setup` makes the users, their credits and the catalogue (and lets the default tier run the
long job of the outage drill); `dataset` makes a user a small training dataset and prints its id;
`submit` submits jobs through the real service (the scheduling pass runs after each commit, as in
the web) and prints their ids as JSON.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from accounts import ledger
    from accounts.models import MembershipTier, User
    from generation.catalogue_sync import sync_catalogue
    from generation.submission import submit_job

    command, *rest = argv
    if command == "setup":
        for name in rest:
            user, _created = User.objects.get_or_create(
                username=name, defaults={"email": f"{name}@example.com"}
            )
            ledger.credit(user, 10_000, "grant", reason="drills", key=f"drills:{name}")
        sync_catalogue(include_workers=False)
        MembershipTier.objects.filter(is_default=True).update(max_steps=800)  # LONG_JOB
        return 0
    if command == "dataset":  # a training dataset of four 32x32 squares for a user; its id
        import io

        from PIL import Image

        from generation.training_datasets import create_dataset

        files = []
        for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
            out = io.BytesIO()
            Image.new("RGB", (32, 32), color).save(out, "PNG")
            files += [(f"{i}.png", io.BytesIO(out.getvalue()))]
            files += [(f"{i}.txt", io.BytesIO(f"a square, color {i}".encode()))]
        user = User.objects.get(username=rest[0])
        print(create_dataset(user, "squares", "sqz", files).pk)
        return 0
    if command == "submit":  # a JSON list of [username, count, params]
        ids = []
        for username, count, params in json.loads(rest[0]):
            user = User.objects.get(username=username)
            ids += [str(submit_job(user, dict(params)).pk) for _ in range(count)]
        print(json.dumps(ids))
        return 0
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
