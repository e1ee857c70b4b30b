"""Textual inversion and DreamBooth prior preservation at the platform's doors: the train
block's new fields checked naming the field, prices that count the extra work, A1111's
train/embedding mapped onto a member's dataset, and class datasets kept private."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from generation.models import Job
from tests.generation.a1111_support import token_for
from tests.generation.conftest import api_client
from tests.generation.test_training_datasets import (
    four_images_zip,
    png,
    train_request,
    upload,
    zip_of,
)

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/training/jobs/"


@pytest.fixture
def alices_dataset(alice) -> int:
    return int(upload(api_client(alice), {"squares.zip": four_images_zip()}).json()["id"])


@pytest.fixture
def alices_classes(alice) -> int:
    files = {"classes.zip": zip_of({f"c{i}.png": png((90, 90, 90 + i)) for i in range(3)})}
    return int(upload(api_client(alice), files, name="plain squares").json()["id"])


def quote(user: Any, body: dict[str, Any]) -> Any:
    """A quote at a real size (tiny sizes round every price to the same cent)."""
    body = {**body, "train": {**body["train"], "resolution": 512, "repeats": 10}}
    return api_client(user).post(f"{JOBS}quote/", body, format="json")


def test_an_embedding_training_is_priced_like_clip_training_and_named_by_itself(
    alice, catalogue, alices_dataset, redis_client
):
    lora = quote(alice, train_request(alices_dataset)).json()
    clip = quote(alice, train_request(alices_dataset, train_text_encoder=True)).json()
    ti_body = train_request(
        alices_dataset, method="textual_inversion", output_name="sqzemb", num_vectors=3
    )
    ti = quote(alice, ti_body).json()
    assert Decimal(str(ti["price"])) == Decimal(str(clip["price"])) > Decimal(str(lora["price"]))

    response = api_client(alice).post(JOBS, ti_body, format="json")
    assert response.status_code == 201, response.content
    train = Job.objects.get().params["train"]
    assert (train["method"], train["num_vectors"], train["train_text_encoder"]) == (
        "textual_inversion",
        3,
        False,
    )
    assert all(i["caption"].startswith("sqzemb") for i in train["images"])


def test_embedding_and_prior_fields_are_checked_naming_the_field(
    alice, catalogue, alices_dataset, alices_classes, redis_client
):
    cases: list[tuple[dict[str, Any], str, int]] = [
        ({"method": "hypernetwork"}, "train.method", 422),
        ({"method": "textual_inversion", "num_vectors": 0}, "train.num_vectors", 422),
        ({"method": "textual_inversion", "num_vectors": 76}, "train.num_vectors", 422),
        (
            {"method": "textual_inversion", "class_dataset_id": alices_classes},
            "train.class_dataset_id",
            422,
        ),
        ({"class_dataset_id": alices_classes}, "train.class_prompt", 422),  # no captions
        (
            {
                "class_dataset_id": alices_classes,
                "class_prompt": "a square",
                "prior_loss_weight": -1,
            },
            "train.prior_loss_weight",
            422,
        ),
        ({"class_dataset_id": 999_999, "class_prompt": "x"}, "train.class_dataset_id", 404),
    ]
    for block, field, code in cases:
        response = api_client(alice).post(
            JOBS, train_request(alices_dataset, **block), format="json"
        )
        assert (response.status_code, response.json()["field"]) == (code, field), block
    assert not Job.objects.exists()


def test_prior_preservation_freezes_the_class_images_and_prices_their_batches(
    alice, bob, catalogue, alices_dataset, alices_classes, redis_client
):
    plain = quote(alice, train_request(alices_dataset)).json()
    body = train_request(
        alices_dataset,
        class_dataset_id=alices_classes,
        class_prompt="a square",
        prior_loss_weight=0.5,
    )
    prior = quote(alice, body).json()
    assert Decimal(str(prior["price"])) > Decimal(str(plain["price"]))
    assert prior["total_steps"] == plain["total_steps"]  # a class batch rides on each step
    assert Decimal(str(prior["class_images_price"])) == 0  # uploaded: nothing to generate
    generated = quote(alice, train_request(alices_dataset, class_count=4, class_prompt="a square"))
    assert Decimal(str(generated.json()["class_images_price"])) > 0

    # bob cannot use alice's class images, and is told exactly what a missing dataset gets
    bobs_own = int(upload(api_client(bob), {"s.zip": four_images_zip()}).json()["id"])
    refused = api_client(bob).post(
        JOBS,
        train_request(bobs_own, class_dataset_id=alices_classes, class_prompt="x"),
        format="json",
    )
    assert (refused.status_code, refused.json()["field"]) == (404, "train.class_dataset_id")

    assert api_client(alice).post(JOBS, body, format="json").status_code == 201
    # the class images stay while the training may fetch them
    assert (
        api_client(alice).delete(f"/api/v1/training/datasets/{alices_classes}/").status_code == 409
    )
    train = Job.objects.get(owner=alice).params["train"]
    assert len(train["class_images"]) == 3 and train["prior_loss_weight"] == 0.5
    assert {i["caption"] for i in train["class_images"]} == {"a square"}


def sdapi(user: Any) -> Any:
    client = api_client(user)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(user)}")
    return client


def test_a1111_train_embedding_trains_on_the_dataset_data_root_names(
    alice, bob, catalogue, alices_dataset, redis_client
):
    body = {
        "embedding_name": "sqzemb",
        "data_root": "squares",
        "learn_rate": 0.005,
        "batch_size": 1,
        "training_width": 32,
        "training_height": 32,
        "steps": 6,
        "num_vectors_per_token": 2,
        "init_text": "red square",
    }
    folder = sdapi(alice).post(
        "/sdapi/v1/train/embedding", {**body, "data_root": "/srv/x"}, format="json"
    )
    assert folder.status_code == 422 and folder.json()["field"] == "data_root"
    assert "/api/v1/training/datasets/" in folder.json()["detail"]
    wide = sdapi(alice).post(
        "/sdapi/v1/train/embedding", {**body, "training_width": "wide"}, format="json"
    )
    assert wide.status_code == 422 and wide.json()["field"] == "training_width"
    schedule = sdapi(alice).post(
        "/sdapi/v1/train/embedding", {**body, "learn_rate": "0.1:10"}, format="json"
    )
    assert schedule.status_code == 422 and schedule.json()["field"] == "learn_rate"
    # bob's data_root cannot reach alice's dataset of that name
    assert sdapi(bob).post("/sdapi/v1/train/embedding", body, format="json").status_code == 422

    response = sdapi(alice).post("/sdapi/v1/train/embedding", body, format="json")
    assert response.status_code == 200, response.content
    job = Job.objects.get(pk=response.json()["job_id"])
    train = job.params["train"]
    assert (train["method"], train["output_name"], train["num_vectors"]) == (
        "textual_inversion",
        "sqzemb",
        2,
    )
    assert train["epochs"] == 2  # 6 steps over 4 images a pass: two whole (metered) epochs
    assert response.json()["job_id"] in response.json()["info"]


def test_a1111_create_embedding_points_at_train_embedding(alice):
    response = sdapi(alice).post(
        "/sdapi/v1/create/embedding", {"name": "x", "num_vectors_per_token": 1}, format="json"
    )
    assert response.status_code == 422
    assert "/sdapi/v1/train/embedding" in response.json()["detail"]


# --- class images generated by the platform ---------------------------------------------------


def generated_classes(dataset_id: int, **extra: Any) -> dict[str, Any]:
    return train_request(
        dataset_id, class_count=2, class_prompt="a square", prior_loss_weight=1.0, **extra
    )


def test_generated_class_images_are_an_ordinary_job_of_alices_the_training_waits_for(
    alice, catalogue, alices_dataset, redis_client
):
    from accounts.ledger import account_for

    before = account_for(alice).balance
    response = api_client(alice).post(JOBS, generated_classes(alices_dataset), format="json")
    assert response.status_code == 201, response.content
    training = Job.objects.get(pk=response.json()["id"])
    class_job = training.after
    assert class_job is not None and class_job.owner == alice
    assert (class_job.mode, class_job.params["batch_size"], class_job.params["prompt"]) == (
        "txt2img",
        2,
        "a square",
    )
    assert training.params["train"]["class_job_id"] == str(class_job.pk)
    # both held now, each as its own job; the scheduler cannot hand the training out yet
    account = account_for(alice)
    assert account.held == class_job.price + training.price > 0
    assert account.balance == before - account.held
    assert list(Job.objects.waiting()) == [class_job]
    # listed among her jobs like any txt2img job
    listed = api_client(alice).get("/api/v1/jobs/").json()
    assert str(class_job.pk) in str(listed)


def test_only_the_class_job_takes_a_place_among_the_waiting_jobs_the_training_waits(
    alice, catalogue, alices_dataset, redis_client, django_capture_on_commit_callbacks
):
    """The waiting set behind queue places (`generation.waiting_set`) holds what the scheduler
    may hand out: the training is added once its class images are frozen, not before."""
    from generation import waiting_set

    with django_capture_on_commit_callbacks(execute=True):
        response = api_client(alice).post(JOBS, generated_classes(alices_dataset), format="json")
    class_job = Job.objects.get(pk=response.json()["id"]).after
    assert class_job is not None
    assert redis_client.zrange(waiting_set.KEY, 0, -1) == [str(class_job.pk).encode()]


def test_cancelling_the_class_job_calls_off_the_training_and_refunds_both(
    alice, catalogue, alices_dataset, redis_client
):
    from accounts.ledger import account_for

    before = account_for(alice).balance
    training_id = (
        api_client(alice).post(JOBS, generated_classes(alices_dataset), format="json").json()["id"]
    )
    class_job = Job.objects.get(pk=training_id).after
    assert class_job is not None
    assert api_client(alice).post(f"/api/v1/jobs/{class_job.pk}/cancel/").status_code in (200, 202)
    training = Job.objects.get(pk=training_id)
    assert training.status == "cancelled" and "class-image job was cancelled" in training.error
    assert account_for(alice).held == 0 and account_for(alice).balance == before


def test_cancelling_the_waiting_training_cancels_its_class_job(
    alice, bob, catalogue, alices_dataset, redis_client
):
    from accounts.ledger import account_for

    before = account_for(alice).balance
    training_id = (
        api_client(alice).post(JOBS, generated_classes(alices_dataset), format="json").json()["id"]
    )
    assert api_client(bob).post(f"/api/v1/jobs/{training_id}/cancel/").status_code == 404
    assert api_client(alice).post(f"/api/v1/jobs/{training_id}/cancel/").status_code in (200, 202)
    training = Job.objects.get(pk=training_id)
    assert training.after is not None
    assert training.status == "cancelled" and training.after.status == "cancelled"
    assert account_for(alice).held == 0 and account_for(alice).balance == before


def test_generated_class_images_are_checked_naming_the_field(
    alice, catalogue, alices_dataset, alices_classes, redis_client
):
    cases: list[tuple[dict[str, Any], str]] = [
        ({"class_count": 2}, "train.class_prompt"),
        ({"class_count": 9, "class_prompt": "a square"}, "train.class_count"),  # 8 a job
        (
            {"class_count": 2, "class_prompt": "x", "class_dataset_id": alices_classes},
            "train.class_count",
        ),
    ]
    for block, field in cases:
        response = api_client(alice).post(
            JOBS, train_request(alices_dataset, **block), format="json"
        )
        assert (response.status_code, response.json()["field"]) == (422, field), block
    assert not Job.objects.exists()


def test_the_page_starts_an_embedding_or_a_lora_with_generated_class_images(
    alice, catalogue, alices_dataset, redis_client
):
    from django.test import Client

    browser = Client()
    browser.force_login(alice)
    form = browser.get(f"/training/datasets/{alices_dataset}/").content.decode()
    assert 'name="method"' in form and 'name="class_count"' in form
    common = {
        "checkpoint": catalogue["a"].name,
        "epochs": "1",
        "repeats": "1",
        "resolution": "32",
        "prompt": "sqzemb, a square",
    }
    response = browser.post(
        f"/training/datasets/{alices_dataset}/train/",
        {**common, "method": "textual_inversion", "output_name": "sqzemb", "num_vectors": "2"},
    )
    assert response.status_code == 302
    embedding = Job.objects.get(mode="train")
    assert embedding.params["train"]["method"] == "textual_inversion"
    page = browser.get(response["Location"]).content.decode()
    assert "2 vectors per token" in page
    assert browser.post(f"/training/jobs/{embedding.pk}/cancel/").status_code == 302

    response = browser.post(
        f"/training/datasets/{alices_dataset}/train/",
        {
            **common,
            "output_name": "sqz-db",
            "class_count": "2",
            "class_prompt": "a square",
            "prior_loss_weight": "1",
        },
    )
    assert response.status_code == 302, response.content
    page = browser.get(response["Location"]).content.decode()
    assert 'id="class-job"' in page
