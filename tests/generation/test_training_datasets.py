"""Training datasets and training requests, as a member meets them: uploads (zip or files,
kohya captions), the tier's limits, re-encoding and EXIF stripping, refusals naming the file,
caption edits, privacy, and the checks of a training job's parameters."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from decimal import Decimal
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from accounts.models import MembershipTier
from generation.models import Job, TrainingImage
from tests.generation.conftest import api_client

pytestmark = pytest.mark.django_db

DATASETS = "/api/v1/training/datasets/"


def png(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def jpeg_with_exif(size: tuple[int, int] = (40, 20)) -> bytes:
    """A JPEG whose EXIF says 'rotate 90°' (orientation 6) and names a camera."""
    image = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    exif[0x010F] = "SecretCam"  # make
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def four_images_zip() -> bytes:
    files: dict[str, bytes] = {}
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        files[f"img/{i}.png"] = png(color)
        files[f"img/{i}.txt"] = f"a square, color {i}".encode()
    files["__MACOSX/img/._0.png"] = b"finder litter"
    return zip_of(files)


def upload(client: Any, files: dict[str, bytes], name: str = "squares", **extra: Any) -> Any:
    return client.post(
        DATASETS,
        {
            "name": name,
            "files": [SimpleUploadedFile(n, data) for n, data in files.items()],
            **extra,
        },
        format="multipart",
    )


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A few hundred bytes whose header claims billions of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_alice_uploads_a_zip_of_images_with_kohya_captions(alice):
    response = upload(api_client(alice), {"squares.zip": four_images_zip()}, trigger_word="sqz")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["trigger_word"] == "sqz"
    assert [i["original_name"] for i in body["images"]] == ["0.png", "1.png", "2.png", "3.png"]
    assert [i["caption"] for i in body["images"]] == [f"a square, color {i}" for i in range(4)]
    assert {(i["width"], i["height"]) for i in body["images"]} == {(32, 32)}


def test_images_are_reencoded_upright_without_their_exif(alice):
    response = upload(api_client(alice), {"photo.jpg": jpeg_with_exif((40, 20))})
    assert response.status_code == 201, response.content
    stored = TrainingImage.objects.get()
    data = stored.file.read()
    assert b"SecretCam" not in data
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.size == (20, 40)  # the orientation was applied, then dropped
        assert not image.info.get("exif") and not image.getexif()


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ({"a.png": png((1, 2, 3)), "notes.pdf": b"%PDF-1.4"}, "notes.pdf"),
        ({"a.png": png((1, 2, 3)), "broken.png": b"\x89PNG\r\n\x1a\nnot really"}, "broken.png"),
        ({"a.png": png((1, 2, 3)), "huge.png": bomb_png()}, "huge.png"),
        ({"a.png": png((1, 2, 3)), "orphan.txt": b"a caption"}, "orphan.txt"),
        ({"set.zip": zip_of({"a.png": png((1, 2, 3)), "inner/evil.exe": b"MZ"})}, "evil.exe"),
    ],
    ids=["not-an-image", "unreadable", "decompression-bomb", "caption-alone", "zip-member"],
)
def test_a_bad_dataset_is_refused_naming_the_file_and_nothing_is_kept(alice, files, named):
    response = upload(api_client(alice), files)
    assert response.status_code == 422, response.content
    assert response.json()["field"] == "files"
    assert named in response.json()["detail"]
    assert not TrainingImage.objects.exists()


def test_tier_limits_on_images_pixels_and_bytes_are_named(alice):
    MembershipTier.objects.update(
        training_max_images=2, training_max_pixels=32 * 32, training_dataset_mb=1
    )
    client = api_client(alice)
    three = {f"{i}.png": png((i, i, i)) for i in range(3)}
    response = upload(client, three)
    assert response.status_code == 422 and "limit of 2" in response.json()["detail"]

    response = upload(client, {"big.png": png((9, 9, 9), (64, 64))})
    assert response.status_code == 422
    assert "big.png is 64x64" in response.json()["detail"] and "1024" in response.json()["detail"]

    # a zip whose member inflates past the byte limit: refused before it is unpacked whole
    bomb = zip_of({"a.png": png((1, 1, 1)), "zeros.txt": b"0" * (3 << 20)})
    assert len(bomb) < 100_000
    response = upload(client, {"bomb.zip": bomb})
    assert response.status_code == 422
    assert "zeros.txt" in response.json()["detail"] and "1 MiB" in response.json()["detail"]


def test_captions_are_editable_and_another_member_cannot_see_or_touch_them(alice, bob):
    alice_api, bob_api = api_client(alice), api_client(bob)
    dataset = upload(alice_api, {"squares.zip": four_images_zip()}).json()
    image = dataset["images"][0]
    url = f"{DATASETS}{dataset['id']}/images/{image['id']}/"

    response = alice_api.patch(url, {"caption": "a red square, flat"}, format="json")
    assert response.status_code == 200 and response.json()["caption"] == "a red square, flat"
    assert TrainingImage.objects.get(pk=image["id"]).caption == "a red square, flat"

    assert bob_api.get(DATASETS).json() == []
    assert bob_api.get(f"{DATASETS}{dataset['id']}/").status_code == 404
    assert bob_api.patch(url, {"caption": "mine now"}, format="json").status_code == 404
    assert bob_api.get(f"{url}file/").status_code == 404
    assert bob_api.delete(f"{DATASETS}{dataset['id']}/").status_code == 404
    assert TrainingImage.objects.get(pk=image["id"]).caption == "a red square, flat"
    assert alice_api.get(f"{url}file/").status_code == 200


# --- training requests ------------------------------------------------------------------------

TRAIN = {
    "checkpoint": "model-a",
    "prompt": "sqz, a square",
    "steps": 4,
    "width": 64,
    "height": 64,
    "seed": 5,
}


def train_request(dataset_id: int, **block: Any) -> dict[str, Any]:
    return {
        **TRAIN,
        "train": {
            "dataset_id": dataset_id,
            "output_name": "my-squares",
            "epochs": 2,
            "repeats": 1,
            "resolution": 32,
            "rank": 4,
            **block,
        },
    }


@pytest.fixture
def alices_dataset(alice) -> int:
    return int(upload(api_client(alice), {"squares.zip": four_images_zip()}).json()["id"])


def test_a_quote_holds_every_epoch_at_the_epoch_price(alice, catalogue, alices_dataset):
    response = api_client(alice).post(
        "/api/v1/training/jobs/quote/", train_request(alices_dataset), format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert Decimal(str(body["price"])) == 2 * Decimal(str(body["epoch_price"])) > 0
    assert body["total_steps"] == 8  # 4 images x 1 repeat, batch 1, two epochs


def test_training_parameters_are_checked_naming_the_field(
    alice, catalogue, alices_dataset, redis_client
):
    client = api_client(alice)
    cases: list[tuple[dict[str, Any], str, int]] = [
        ({"rank": 0}, "train.rank", 422),
        ({"resolution": 30}, "train.resolution", 422),
        ({"lr_scheduler": "warp"}, "train.lr_scheduler", 422),
        ({"learning_rate": "fast"}, "train.learning_rate", 400),
        ({"epochs": 1000}, "train.epochs", 422),
        ({"nonsense": 1}, "train.nonsense", 400),
        ({"output_name": "bad/name"}, "train.output_name", 422),
    ]
    for block, field, code in cases:
        response = client.post(
            "/api/v1/training/jobs/", train_request(alices_dataset, **block), format="json"
        )
        assert (response.status_code, response.json()["field"]) == (code, field), block
    assert not Job.objects.exists()


def test_bob_cannot_train_on_alices_dataset(alice, bob, catalogue, alices_dataset, redis_client):
    bobs = api_client(bob).post(
        "/api/v1/training/jobs/", train_request(alices_dataset), format="json"
    )
    nobodys = api_client(bob).post("/api/v1/training/jobs/", train_request(999_999), format="json")
    assert bobs.status_code == nobodys.status_code == 404
    assert bobs.json()["detail"] == nobodys.json()["detail"]


def test_the_tier_says_who_may_train_and_how_many_at_once(
    alice, catalogue, alices_dataset, redis_client
):
    client = api_client(alice)
    MembershipTier.objects.update(max_trainings=0)
    response = client.post("/api/v1/training/jobs/", train_request(alices_dataset), format="json")
    assert response.status_code == 403 and response.json()["field"] == "train"

    MembershipTier.objects.update(max_trainings=1, max_unfinished_jobs=5)
    first = client.post("/api/v1/training/jobs/", train_request(alices_dataset), format="json")
    assert first.status_code == 201, first.content
    second = client.post(
        "/api/v1/training/jobs/", train_request(alices_dataset, output_name="other"), format="json"
    )
    assert second.status_code == 429 and "allows 1 at once" in second.json()["detail"]


def test_a_running_training_keeps_its_dataset(alice, catalogue, alices_dataset, redis_client):
    client = api_client(alice)
    assert (
        client.post(
            "/api/v1/training/jobs/", train_request(alices_dataset), format="json"
        ).status_code
        == 201
    )
    assert client.delete(f"{DATASETS}{alices_dataset}/").status_code == 409

    # the job is one of hers like any other: My jobs and its page show it
    from django.test import Client

    browser = Client()
    browser.force_login(alice)
    job = Job.objects.get(mode="train")
    assert browser.get("/jobs/").status_code == 200
    assert browser.get(f"/jobs/{job.pk}/").status_code == 200
    page = browser.get(f"/training/jobs/{job.pk}/").content.decode()
    assert "my-squares" in page and "No epoch finished yet." in page


# --- the pages --------------------------------------------------------------------------------


def test_alice_uploads_and_edits_captions_on_the_page_and_bob_gets_404(alice, bob):
    from django.test import Client

    browser = Client()
    browser.force_login(alice)
    response = browser.post(
        "/training/datasets/",
        {
            "name": "squares",
            "trigger_word": "sqz",
            "files": [SimpleUploadedFile("s.zip", four_images_zip())],
        },
    )
    assert response.status_code == 302
    page_url = response["Location"]
    page = browser.get(page_url).content.decode()
    assert "a square, color 0" in page and "Save captions" in page
    first, *_ = TrainingImage.objects.order_by("position")
    response = browser.post(page_url, {f"caption-{first.pk}": "sqz, a red square"})
    assert response.status_code == 302
    first.refresh_from_db()
    assert first.caption == "sqz, a red square"

    refused = browser.post(
        "/training/datasets/",
        {"name": "x", "files": [SimpleUploadedFile("x.gif.exe", b"MZ")]},
        follow=True,
    )
    assert "x.gif.exe" in refused.content.decode()

    intruder = Client()
    intruder.force_login(bob)
    assert intruder.get(page_url).status_code == 404
    assert intruder.post(page_url, {f"caption-{first.pk}": "bob was here"}).status_code == 404
    first.refresh_from_db()
    assert first.caption == "sqz, a red square"


def test_the_training_endpoints_are_in_the_openapi_schema(alice):
    schema = api_client(alice).get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = set(schema["paths"])
    assert {
        "/api/v1/training/datasets/",
        "/api/v1/training/datasets/{id}/images/{image_pk}/",
        "/api/v1/training/jobs/",
        "/api/v1/training/jobs/{id}/",
        "/api/v1/training/jobs/{id}/epochs/{epoch}/lora/",
    } <= paths
    assert "train" in schema["components"]["schemas"]["TrainingRequest"]["properties"]


# --- epoch posts (what a worker sends) --------------------------------------------------------


def post_epoch(client: Any, url: str, epoch: int, lora: bytes, state: bytes) -> Any:
    import hashlib

    for part, data in (("lora", lora), ("state", state)):
        response = client.post(
            f"{url}?part={part}&epoch={epoch}&offset=0",
            data,
            content_type="application/octet-stream",
        )
        if response.status_code != 200:
            return response
    return client.post(
        url,
        {
            "epoch": epoch,
            "steps": 4 * epoch,
            "losses": "[0.5, 0.4]",
            "lora_sha256": hashlib.sha256(lora).hexdigest(),
            "state_sha256": hashlib.sha256(state).hexdigest(),
            "sample": SimpleUploadedFile("sample.png", png((1, 2, 3), (64, 64))),
        },
    )


def test_an_epoch_is_recorded_and_charged_once_and_a_replaced_attempt_is_refused(
    alice, catalogue, alices_dataset, redis_client, settings, tmp_path
):
    from django.test import Client

    from accounts import ledger
    from accounts.models import CreditEntry
    from generation.pricing import epoch_price
    from generation.training_links import training_delivery
    from tests.model_file_builder import sd1_lora

    settings.MODEL_STORE_DIR = tmp_path / "store"
    settings.MEDIA_ROOT = tmp_path / "media"
    response = api_client(alice).post(
        "/api/v1/training/jobs/", train_request(alices_dataset), format="json"
    )
    job = Job.objects.get(pk=response.json()["id"])
    job.mark_assigned("w1")
    url = training_delivery(job)["epoch_url"].split("://", 1)[1].split("/", 1)[1]
    worker = Client()  # no session: the signed address is the worker's whole permission
    lora, state = sd1_lora(), b"state" * 1000

    first = post_epoch(worker, f"/{url}", 1, lora, state)
    again = post_epoch(worker, f"/{url}", 1, lora, state)  # its answer was lost: sent again
    assert (first.status_code, again.status_code) == (201, 201)
    share = epoch_price(job.params, job.checkpoint)
    parts = CreditEntry.objects.filter(job_id=job.pk, kind="part_capture")
    assert [p.charged for p in parts] == [share]
    assert job.training_epochs.get().state.read() == state

    skipped = post_epoch(worker, f"/{url}", 3, lora, state)
    assert skipped.status_code == 409 and "does not follow" in skipped.json()["detail"]
    forged = post_epoch(worker, f"/{url}x", 2, lora, state)
    assert forged.status_code == 404

    job.refresh_from_db()
    assert job.return_to_queue()  # the worker was lost: its attempt's posts are refused
    stale = post_epoch(worker, f"/{url}", 2, lora, state)
    assert stale.status_code == 409
    assert job.training_epochs.count() == 1 and parts.count() == 1
    assert not ledger.find_violations()
