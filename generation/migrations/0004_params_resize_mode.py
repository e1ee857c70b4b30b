"""Job.params is gpu_worker.params.GenerationParams: txt2img rows gain resize_mode (0, unused by
txt2img) so every stored request has the same fields."""

from __future__ import annotations

from django.db import migrations


def add_resize_mode(apps, schema_editor):
    Job = apps.get_model("generation", "Job")
    changed = []
    for job in Job.objects.exclude(params={}).only("pk", "params").iterator():
        if isinstance(job.params, dict) and "resize_mode" not in job.params:
            job.params = {**job.params, "resize_mode": 0}
            changed.append(job)
    Job.objects.bulk_update(changed, ["params"], batch_size=500)


class Migration(migrations.Migration):
    dependencies = [("generation", "0003_scheduler")]

    operations = [migrations.RunPython(add_resize_mode, migrations.RunPython.noop)]
