"""Textual inversion and prior preservation on the tiny demo models (CPU): the embedding's
vectors are all that learns, the file is A1111's format, our generator loads it by its name
and it changes the image; resuming is exact; DreamBooth's class loss is recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.gpu_worker.conftest import demo_request
from tests.gpu_worker.test_training import dataset, metadata_of, params, tensors_of

pytest.importorskip("diffusers")


def ti_trainer(engine: Any, name: str = "atelier-demo-v1", **overrides: Any) -> Any:
    import torch

    from gpu_worker.loading import load_checkpoint
    from gpu_worker.textual_inversion import EmbeddingTrainer

    item = engine.resolve("checkpoint", name)
    pipe = load_checkpoint(item, dtype=torch.float32, cache_dir=engine.cache_dir)
    pipe.set_progress_bar_config(disable=True)
    values = {
        "method": "textual_inversion",
        "output_name": "sqzemb",
        "num_vectors": 2,
        "init_text": "red square",
        "learning_rate": 0.05,
        **overrides,
    }
    captions = [f"sqzemb, square {i}" for i in range(4)]
    images = [type(d)(d.image, c) for d, c in zip(dataset(), captions, strict=True)]
    trainer = EmbeddingTrainer(pipe, item.family, params(**values), images, seed=7)
    return trainer, item, pipe


def embedding_file(trainer: Any, item: Any) -> bytes:
    return bytes(
        trainer.output_file(
            output_name="sqzemb",
            base_name=item.name,
            base_sha256=item.sha256,
            architecture=item.architecture,
        )
    )


def test_only_the_new_vectors_learn_and_start_from_the_init_text(engine: Any) -> None:
    import torch

    trainer, _item, pipe = ti_trainer(engine)
    inner = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)
    table = inner.embeddings.token_embedding.weight
    ids = pipe.tokenizer("red square", add_special_tokens=False).input_ids
    start = trainer.vectors[0].detach().clone()
    assert torch.equal(start[0], table[ids[0]]) and torch.equal(start[1], table[ids[1]])
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    clip_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}

    result = trainer.train_epoch()

    assert result.global_step == 4 and all(np.isfinite(result.losses))
    assert not torch.equal(trainer.vectors[0].detach(), start)
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in unet_before.items())
    assert all(torch.equal(v, pipe.text_encoder.state_dict()[k]) for k, v in clip_before.items())


def test_the_embedding_is_a1111s_file_and_changes_our_generators_image(engine: Any) -> None:
    trainer, item, _pipe = ti_trainer(engine)
    trainer.train_epoch()
    trainer.train_epoch()
    data = embedding_file(trainer, item)
    tensors, metadata = tensors_of(data), metadata_of(data)
    assert list(tensors) == ["emb_params"] and tuple(tensors["emb_params"].shape) == (2, 32)
    assert metadata["name"] == "sqzemb" and metadata["step"] == "8"
    assert metadata["sd_checkpoint"] == item.sha256[:10]
    assert metadata["sd_checkpoint_name"] == item.name

    folder: Path = engine.models_dir / "embeddings"
    folder.mkdir(exist_ok=True)
    path = folder / "sqzemb.safetensors"
    plain = engine.run(demo_request(prompt="a square", seed=1)).images[0]
    without = engine.run(demo_request(prompt="sqzemb, a square", seed=1)).images[0]
    path.write_bytes(data)
    try:
        found = engine.refresh_catalogue().resolve("embedding", "sqzemb")
        assert found.family == "sd1"
        tagged = engine.run(demo_request(prompt="sqzemb, a square", seed=1)).images[0]
        untouched = engine.run(demo_request(prompt="a square", seed=1)).images[0]
        assert tagged["png_b64"] != without["png_b64"]
        assert untouched["png_b64"] == plain["png_b64"]  # only where its name stands
        assert "TI hashes" in tagged["infotext"] and "sqzemb" in tagged["infotext"]
    finally:
        path.unlink()
        engine.refresh_catalogue()


def test_a_resumed_embedding_training_ends_where_an_unbroken_one_does(engine: Any) -> None:
    unbroken, item, _ = ti_trainer(engine, lr_scheduler="cosine")
    unbroken.train_epoch()
    unbroken.train_epoch()
    first, _, _ = ti_trainer(engine, lr_scheduler="cosine")
    first.train_epoch()
    second, _, _ = ti_trainer(engine, lr_scheduler="cosine")
    second.load_state(first.state_bytes())
    second.train_epoch()
    expected = tensors_of(embedding_file(unbroken, item))["emb_params"]
    resumed = tensors_of(embedding_file(second, item))["emb_params"]
    assert np.array_equal(expected.numpy(), resumed.numpy())


def test_sdxl_embeddings_train_both_encoders_as_clip_l_and_clip_g(xl_engine: Any) -> None:
    import torch

    from gpu_worker.prompt_encoding import load_embedding

    trainer, item, pipe = ti_trainer(xl_engine, "atelier-demo-xl", resolution=64)
    starts = [v.detach().clone() for v in trainer.vectors]
    trainer.train_epoch()
    assert all(not torch.equal(v.detach(), s) for v, s in zip(trainer.vectors, starts, strict=True))
    data = embedding_file(trainer, item)
    tensors = tensors_of(data)
    assert set(tensors) == {"clip_l", "clip_g"}
    dims = (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size)
    assert (tensors["clip_l"].shape[1], tensors["clip_g"].shape[1]) == dims
    path = xl_engine.cache_dir / "sqzemb-xl.safetensors"
    path.write_bytes(data)
    loaded = load_embedding("sqzemb", str(path), sdxl=True, dims=dims)
    assert loaded is not None and loaded.length == 2


def test_prior_preservation_mixes_class_batches_and_records_their_loss(engine: Any) -> None:
    import torch

    from gpu_worker.loading import load_checkpoint
    from gpu_worker.training import LoraTrainer, TrainingImage

    item = engine.resolve("checkpoint", "atelier-demo-v1")

    def run(weight: float) -> Any:
        pipe = load_checkpoint(item, dtype=torch.float32, cache_dir=engine.cache_dir)
        classes = [
            TrainingImage(Image.new("RGB", (32, 32), (90, 90, 90 + i)), "a square")
            for i in range(3)
        ]
        trainer = LoraTrainer(
            pipe,
            item.family,
            params(prior_loss_weight=weight),
            dataset(),
            seed=7,
            class_images=classes if weight else None,
        )
        return trainer, trainer.train_epoch()

    plain_trainer, plain = run(0.0)
    prior_trainer, prior = run(1.0)
    assert plain.prior_losses == [] and len(prior.prior_losses) == len(prior.losses) == 4
    assert all(np.isfinite(prior.prior_losses))
    plain_lora = plain_trainer.kohya_tensors()
    prior_lora = prior_trainer.kohya_tensors()
    assert any(not torch.equal(plain_lora[k], prior_lora[k]) for k in plain_lora)
