"""The LoRA trainer on the tiny demo models (CPU): kohya's file format as A1111 and our own
generator read it, text-encoder training, SDXL, and resuming from an epoch's state exactly."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gpu_worker.params import TRAIN_DEFAULTS, TrainParams
from gpu_worker.training_rules import batches_per_epoch, bucket_for, buckets, kohya_keys
from tests.gpu_worker.conftest import demo_request


def params(**overrides: Any) -> TrainParams:
    values: dict[str, Any] = {
        **TRAIN_DEFAULTS,
        "dataset_id": 1,
        "output_name": "squares",
        "trigger_word": "sqz",
        "epochs": 2,
        "repeats": 1,
        "resolution": 32,
        "rank": 4,
        "alpha": 4.0,
        "learning_rate": 5e-3,
        "images": [],
        **overrides,
    }
    return values  # type: ignore[return-value]


def dataset() -> list[Any]:
    from gpu_worker.training import TrainingImage

    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    return [
        TrainingImage(Image.new("RGB", (32, 32), c), f"sqz, square {i}")
        for i, c in enumerate(colors)
    ]


def trainer_for(engine: Any, name: str, **overrides: Any) -> Any:
    import torch

    from gpu_worker.loading import load_checkpoint
    from gpu_worker.training import LoraTrainer

    item = engine.resolve("checkpoint", name)
    pipe = load_checkpoint(item, dtype=torch.float32, cache_dir=engine.cache_dir)
    pipe.set_progress_bar_config(disable=True)
    return LoraTrainer(pipe, item.family, params(**overrides), dataset(), seed=7), item


def lora_file(trainer: Any, item: Any) -> bytes:
    return bytes(
        trainer.kohya_file(
            output_name="squares",
            base_name=item.name,
            base_sha256=item.sha256,
            architecture=item.architecture,
        )
    )


def tensors_of(data: bytes) -> dict[str, Any]:
    from safetensors.torch import load

    return load(data)


def metadata_of(data: bytes) -> dict[str, str]:
    import json

    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size])["__metadata__"]


# --- rules shared with the platform ----------------------------------------------------------


def test_buckets_keep_the_area_and_put_each_image_in_its_nearest_aspect() -> None:
    for width, height in buckets(512):
        assert width % 64 == 0 and height % 64 == 0 and width * height <= 512 * 512
    assert bucket_for(512, 512, 512) == (512, 512)
    assert bucket_for(1024, 512, 512)[0] > bucket_for(1024, 512, 512)[1]  # landscape stays so
    assert bucket_for(300, 900, 512)[1] > bucket_for(300, 900, 512)[0]
    # two buckets: 3 squares and 1 wide image, 2 repeats, batch 2 -> 3 + 1 batches
    assert batches_per_epoch([(32, 32)] * 3 + [(96, 32)], 32, repeats=2, batch_size=2) == 4


def test_sdxl_blocks_take_their_original_names() -> None:
    from gpu_worker.training_rules import sgm_unet_path

    tail = "transformer_blocks.0.attn1.to_q"
    assert sgm_unet_path(f"down_blocks.1.attentions.0.{tail}", 2) == f"input_blocks.4.1.{tail}"
    assert sgm_unet_path(f"down_blocks.2.attentions.1.{tail}", 2) == f"input_blocks.8.1.{tail}"
    assert sgm_unet_path(f"mid_block.attentions.0.{tail}", 2) == f"middle_block.1.{tail}"
    assert sgm_unet_path(f"up_blocks.0.attentions.2.{tail}", 2) == f"output_blocks.2.1.{tail}"
    assert sgm_unet_path(f"up_blocks.1.attentions.0.{tail}", 2) == f"output_blocks.3.1.{tail}"


def test_peft_keys_take_kohya_names() -> None:
    peft = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight"]
    assert kohya_keys("lora_unet", peft) == {
        peft[0]: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
        ".lora_down.weight"
    }
    with pytest.raises(ValueError):
        kohya_keys("lora_unet", ["conv_in.weight"])


# --- the trainer --------------------------------------------------------------------------


def test_two_epochs_write_a_kohya_lora_that_our_generator_applies(
    engine: Any, tmp_path: Path
) -> None:
    trainer, item = trainer_for(engine, "atelier-demo-v1")
    first = trainer.train_epoch()
    second = trainer.train_epoch()
    assert (first.epoch, second.epoch, second.global_step) == (1, 2, 8)
    data = lora_file(trainer, item)
    tensors, metadata = tensors_of(data), metadata_of(data)
    assert all(k.startswith("lora_unet_") for k in tensors)
    downs = [k for k in tensors if k.endswith(".lora_down.weight")]
    assert downs and all(k.replace("lora_down", "lora_up") in tensors for k in downs)
    assert all(k.rsplit(".", 2)[0] + ".alpha" in tensors for k in downs)
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "4.0")
    assert (metadata["ss_epoch"], metadata["ss_num_epochs"], metadata["ss_steps"]) == (
        "2",
        "2",
        "8",
    )
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert '"1_squares"' in metadata["ss_tag_frequency"] and len(metadata["sshs_model_hash"]) == 64

    # dropped into the models folder, it is catalogued as an SD1 LoRA and changes the image
    folder = engine.models_dir / "Lora"
    path = folder / "trained-squares.safetensors"
    path.write_bytes(data)
    try:
        assert engine.refresh_catalogue().resolve("lora", "trained-squares").family == "sd1"
        base = engine.run(demo_request(prompt="sqz, a square", seed=1)).images[0]
        tagged = engine.run(
            demo_request(prompt="sqz, a square <lora:trained-squares:1>", seed=1)
        ).images[0]
        assert base["png_b64"] != tagged["png_b64"]
        assert "trained-squares" in tagged["infotext"]
    finally:
        path.unlink()
        engine.refresh_catalogue()


def test_text_encoder_training_writes_lora_te_keys_diffusers_loads(engine: Any) -> None:
    import torch

    from gpu_worker.loading import load_checkpoint

    trainer, item = trainer_for(engine, "atelier-demo-v1", train_text_encoder=True)
    trainer.train_epoch()
    data = lora_file(trainer, item)
    te_keys = [k for k in tensors_of(data) if k.startswith("lora_te_text_model_encoder_layers_")]
    assert te_keys
    assert metadata_of(data)["ss_network_train_unet_only"] == "False"

    pipe = load_checkpoint(item, dtype=torch.float32, cache_dir=engine.cache_dir)
    before = pipe.text_encoder(torch.tensor([[1, 2, 3]]))[0]
    pipe.load_lora_weights(tensors_of(data), adapter_name="t")
    after = pipe.text_encoder(torch.tensor([[1, 2, 3]]))[0]
    assert not torch.allclose(before, after)


def test_resuming_from_an_epochs_state_trains_exactly_as_one_unbroken_run(engine: Any) -> None:
    unbroken, item = trainer_for(engine, "atelier-demo-v1", lr_scheduler="cosine")
    unbroken.train_epoch()
    unbroken.train_epoch()

    first_worker, _ = trainer_for(engine, "atelier-demo-v1", lr_scheduler="cosine")
    first_worker.train_epoch()
    state = first_worker.state_bytes()
    second_worker, _ = trainer_for(engine, "atelier-demo-v1", lr_scheduler="cosine")
    second_worker.load_state(state)
    assert (second_worker.epoch, second_worker.global_step) == (1, 4)
    second_worker.train_epoch()

    expected, resumed = (
        tensors_of(lora_file(unbroken, item)),
        tensors_of(lora_file(second_worker, item)),
    )
    assert expected.keys() == resumed.keys()
    assert all(np.array_equal(expected[k].numpy(), resumed[k].numpy()) for k in expected)
    assert second_worker.lr_scheduler.get_last_lr() == unbroken.lr_scheduler.get_last_lr()


def test_sdxl_training_names_both_text_encoders_and_loads_back(xl_engine: Any) -> None:
    import torch

    from gpu_worker.loading import load_checkpoint

    trainer, item = trainer_for(
        xl_engine, "atelier-demo-xl", train_text_encoder=True, resolution=64
    )
    result = trainer.train_epoch()
    assert result.losses and all(np.isfinite(result.losses))
    data = lora_file(trainer, item)
    keys = tensors_of(data).keys()
    assert any(k.startswith("lora_te1_") for k in keys) and any(
        k.startswith("lora_te2_") for k in keys
    )
    unet_keys = [k for k in keys if k.startswith("lora_unet_")]
    assert unet_keys and all(  # SDXL's original block names, as kohya writes them
        k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_"))
        for k in unet_keys
    )
    assert metadata_of(data)["ss_base_model_version"] == "sdxl_base_v1-0"
    png = trainer.sample("sqz", "", steps=2, cfg_scale=5.0, width=64, height=64, infotext="x")
    assert Image.open(io.BytesIO(png)).size == (64, 64)

    pipe = load_checkpoint(item, dtype=torch.float32, cache_dir=xl_engine.cache_dir)
    pipe.set_progress_bar_config(disable=True)

    def image() -> bytes:
        return (
            pipe(
                prompt="sqz",
                num_inference_steps=2,
                width=64,
                height=64,
                generator=torch.Generator().manual_seed(1),
                output_type="np",
            )
            .images[0]
            .tobytes()
        )

    plain = image()
    pipe.load_lora_weights(tensors_of(data), adapter_name="t")
    adapted = [n for n, _ in pipe.unet.named_parameters() if "lora_A" in n]
    assert len(adapted) == len([k for k in unet_keys if k.endswith("lora_down.weight")])
    assert image() != plain
