"""The gallery's search reads `Publication.search_text` (the prompt without private model
names) instead of the job's prompt. Existing publications get their prompt without any
`<lora:...>`-style tag: the safe choice where the migration cannot tell which were private
(a re-publish sets the full text)."""

import re

from django.db import migrations, models

EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def fill_search_text(apps, schema_editor):
    Publication = apps.get_model("gallery", "Publication")
    for publication in Publication.objects.select_related("image__job").iterator():
        prompt = str((publication.image.job.params or {}).get("prompt", ""))
        publication.search_text = EXTRA_NETWORK.sub("", prompt)
        publication.save(update_fields=["search_text"])


class Migration(migrations.Migration):
    dependencies = [
        ("gallery", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="publication",
            name="search_text",
            field=models.TextField(blank=True, editable=False),
        ),
        migrations.RunPython(fill_search_text, migrations.RunPython.noop),
    ]
