"""Variation seeds and tiling at the front doors: REST and the A1111 translation carry them into
the job's parameters, the service resolves a random subseed, and img2img refuses a variation."""

from __future__ import annotations

import pytest

from generation.a1111.translation import translate
from generation.submission import SubmissionError, validate_params
from tests.generation.conftest import SMALL

pytestmark = pytest.mark.django_db


def test_rest_stores_the_variation_and_tiling(alice_api, catalogue):
    body = {**SMALL, "subseed": 5, "subseed_strength": 0.3, "tiling": True}
    body |= {"seed_resize_from_w": 512, "seed_resize_from_h": 768}
    response = alice_api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.content
    params = response.json()["params"]
    assert (params["subseed"], params["subseed_strength"], params["tiling"]) == (5, 0.3, True)
    assert (params["seed_resize_from_w"], params["seed_resize_from_h"]) == (512, 768)


def test_a_random_subseed_is_resolved_and_a_half_seed_resize_is_off(alice, catalogue):
    params = validate_params(alice, {**SMALL, "subseed": -1, "seed_resize_from_w": 512}).params
    assert params["subseed"] >= 0
    assert (params["seed_resize_from_w"], params["seed_resize_from_h"]) == (0, 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("subseed_strength", 1.5), ("subseed", -2), ("tiling", "maybe"), ("seed_resize_from_h", -5)],
)
def test_out_of_range_values_are_refused_naming_the_field(alice_api, catalogue, field, value):
    response = alice_api.post("/api/v1/jobs/", {**SMALL, field: value}, format="json")
    assert response.status_code in (400, 422)
    assert response.json()["field"] == field


def test_img2img_refuses_a_variation(alice, catalogue):
    with pytest.raises(SubmissionError) as caught:
        validate_params(alice, {**SMALL, "init_image": "iVBORw0KGgo=", "subseed_strength": 0.5})
    assert caught.value.field == "subseed_strength"


def test_the_a1111_api_passes_variation_seeds_and_tiling_through(alice, catalogue):
    body = {"prompt": "x", "subseed": 9, "subseed_strength": 0.25, "tiling": True}
    body |= {"seed_resize_from_w": 640, "seed_resize_from_h": 512}
    body |= {"override_settings": {"sd_model_checkpoint": "model-a"}}
    params = translate(alice, body, "txt2img").params
    assert params["subseed"] == 9 and params["subseed_strength"] == 0.25
    assert params["tiling"] is True
    assert (params["seed_resize_from_w"], params["seed_resize_from_h"]) == (640, 512)
    validated = validate_params(alice, {**params, "steps": 4, "width": 64, "height": 64}).params
    assert validated["seed_resize_from_w"] == 640 and validated["tiling"] is True


def test_an_a1111_infotext_fills_the_variation(alice, catalogue):
    text = "a cat\nSteps: 4, Seed: 3, Variation seed: 77, Variation seed strength: 0.5"
    text += ", Tiling: True"
    params = translate(alice, {"infotext": text}, "txt2img").params
    assert (params["subseed"], params["subseed_strength"], params["tiling"]) == (77, 0.5, True)
