"""LoRA training on diffusers + peft: the loop, its checkpoint state and the kohya output file.

`LoraTrainer` owns one private pipeline (never the engine's cached one: adapters injected here
must not leak into other members' generations). It trains epoch by epoch; between epochs its
whole state (adapter weights, optimizer, LR schedule, the one random generator every draw comes
from) can be written out and read back, so a job resumed from epoch k on another worker trains
epochs k+1.. exactly as the first worker would have. Transport (fetching the dataset, sending
epochs to the platform) is `training_job`'s, so this loop can be timed on its own (the bench).
"""

from __future__ import annotations

import hashlib
import io
import math
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from gpu_worker.model_files import ARCHITECTURE_METADATA_KEY
from gpu_worker.params import TrainParams
from gpu_worker.training_rules import (
    TEXT_ENCODER_PREFIXES,
    TEXT_ENCODER_TARGETS,
    UNET_PREFIX,
    UNET_TARGETS,
    bucket_for,
    kohya_keys,
    sgm_unet_path,
    training_metadata,
)

ADAPTER = "default"
StepCallback = Callable[[int, torch.Tensor], None]  # (global step done, model input latents)


@dataclass
class TrainingImage:
    image: Image.Image
    caption: str


@dataclass
class EpochResult:
    epoch: int
    losses: list[float]  # one per optimizer step (instance images)
    global_step: int
    prior_losses: list[float] = field(default_factory=list)  # on class images, when preserved


def _resize_cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover the bucket, then crop the middle (kohya's bucket crop without jitter)."""
    ratio = max(width / image.width, height / image.height)
    scaled = image.resize(
        (max(width, round(image.width * ratio)), max(height, round(image.height * ratio))),
        Image.Resampling.LANCZOS,
    )
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    data = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    pixels = data.reshape(image.height, image.width, 3).permute(2, 0, 1).float()
    return pixels / 127.5 - 1.0


class LoraTrainer:
    def __init__(
        self,
        pipe: Any,
        family: str,
        params: TrainParams,
        dataset: list[TrainingImage],
        *,
        seed: int,
        device: torch.device | str = "cpu",
        class_images: list[TrainingImage] | None = None,
    ) -> None:
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        self.pipe, self.family, self.params = pipe, family, params
        self.device = torch.device(device)
        self.seed = seed
        self.sdxl = family == "sdxl"
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.epoch = 0
        self.global_step = 0
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        pipe.to(self.device)
        self.weight_dtype = pipe.unet.dtype
        self.encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if self.sdxl else [])
        self.tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if self.sdxl else [])
        self.captions = [item.caption for item in dataset]
        self._latent_stats = self._encode_dataset(dataset)
        # DreamBooth's prior preservation: class images, encoded alike, each instance batch
        # paired with a class batch whose loss counts `prior_loss_weight` times.
        self.class_captions = [item.caption for item in class_images or []]
        self._class_stats = self._encode_dataset(class_images or [])
        self.prior_weight = float(params.get("prior_loss_weight", 1.0))
        self.trained = self._inject_adapters()
        self.optimizer = torch.optim.AdamW(self._trainable(), lr=params["learning_rate"])
        self.steps_per_epoch = len(self._epoch_batches(random.Random(0)))
        self.lr_scheduler = get_scheduler(
            params["lr_scheduler"],
            optimizer=self.optimizer,
            num_warmup_steps=params["lr_warmup_steps"],
            num_training_steps=self.steps_per_epoch * params["epochs"],
        )

    # --- setup ---------------------------------------------------------------------------
    def _encode_dataset(
        self, dataset: list[TrainingImage]
    ) -> list[tuple[tuple[int, int], tuple[int, int], torch.Tensor]]:
        """Each image's bucket, original size and VAE posterior (mean and log-variance), encoded
        once in float32: every step then draws a fresh latent sample from it, which is what
        encoding the image again would give, at none of the cost."""
        vae = self.pipe.vae
        resolution = self.params["resolution"]
        stats = []
        original_dtype = vae.dtype
        vae.to(torch.float32)  # fp16 VAEs overflow when encoding (SDXL's famously)
        with torch.no_grad():
            for item in dataset:
                bucket = bucket_for(item.image.width, item.image.height, resolution)
                pixels = _to_tensor(_resize_cover(item.image, *bucket)).unsqueeze(0)
                posterior = vae.encode(pixels.to(self.device, torch.float32)).latent_dist
                stats.append(
                    (
                        bucket,
                        (item.image.width, item.image.height),
                        posterior.parameters.detach().cpu(),
                    )
                )
        vae.to(original_dtype)
        return stats

    def _inject_adapters(self) -> dict[str, torch.nn.Module]:
        from peft import LoraConfig, inject_adapter_in_model

        p = self.params
        trained: dict[str, torch.nn.Module] = {}
        targets: list[tuple[str, torch.nn.Module, tuple[str, ...]]] = [
            (UNET_PREFIX, self.pipe.unet, UNET_TARGETS)
        ]
        if p["train_text_encoder"]:
            prefixes = TEXT_ENCODER_PREFIXES["sdxl" if self.sdxl else "sd1"]
            targets += [
                (prefix, encoder, TEXT_ENCODER_TARGETS)
                for prefix, encoder in zip(prefixes, self.encoders, strict=True)
            ]
        for module in [self.pipe.unet, *self.encoders, self.pipe.vae]:
            module.requires_grad_(False)
        for prefix, module, names in targets:
            config = LoraConfig(
                r=p["rank"],
                # kohya's alpha may be fractional; peft scales by lora_alpha / r either way
                lora_alpha=p["alpha"],  # type: ignore[arg-type]
                target_modules=list(names),
                init_lora_weights=True,  # kohya's: down random (Kaiming), up zero
            )
            # The adapter starts from the trainer's generator, so a seed reproduces a run.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
                inject_adapter_in_model(config, module, adapter_name=ADAPTER)
            for param in _lora_parameters(module):
                param.requires_grad_(True)
                param.data = param.data.float()  # optimizer state in fp32 over fp16 weights
            trained[prefix] = module
        return trained

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for module in self.trained.values() for p in _lora_parameters(module)]

    # --- one epoch -----------------------------------------------------------------------
    def _epoch_batches(self, rng: random.Random) -> list[list[int]]:
        """Each image `repeats` times, batched within its bucket, batches in random order."""
        by_bucket: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (bucket, _size, _stats) in enumerate(self._latent_stats):
            by_bucket[bucket].extend([index] * self.params["repeats"])
        batches: list[list[int]] = []
        size = self.params["batch_size"]
        for bucket in sorted(by_bucket):
            items = by_bucket[bucket]
            rng.shuffle(items)
            batches += [items[i : i + size] for i in range(0, len(items), size)]
        rng.shuffle(batches)
        return batches

    def train_epoch(self, on_step: StepCallback | None = None) -> EpochResult:
        """Train the next epoch; `on_step` may raise to stop (cancel)."""
        epoch = self.epoch + 1
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        for module in self.trained.values():
            module.train()
        losses: list[float] = []
        prior_losses: list[float] = []
        for batch in self._epoch_batches(rng):
            loss, model_input = self._forward(batch, self._latent_stats, self.captions)
            total = loss
            if self._class_stats:
                prior, _ = self._forward(
                    self._class_batch(rng, len(batch)), self._class_stats, self.class_captions
                )
                prior_losses.append(float(prior.detach()))
                total = loss + self.prior_weight * prior
            total.backward()
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            self.global_step += 1
            if on_step is not None:
                on_step(self.global_step, model_input)
        self.epoch = epoch
        return EpochResult(
            epoch=epoch, losses=losses, global_step=self.global_step, prior_losses=prior_losses
        )

    def _class_batch(self, rng: random.Random, size: int) -> list[int]:
        """`size` class images of one bucket (a random one's), drawn with replacement."""
        first = rng.randrange(len(self._class_stats))
        bucket = self._class_stats[first][0]
        same = [i for i, (b, _s, _p) in enumerate(self._class_stats) if b == bucket]
        return [first] + [rng.choice(same) for _ in range(size - 1)]

    def _forward(
        self, batch: list[int], latent_stats: list[Any], captions: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoising loss of one batch (not yet backpropagated) and its model input."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        device, dtype = self.device, self.weight_dtype
        stats = torch.cat([latent_stats[i][2] for i in batch])
        posterior = DiagonalGaussianDistribution(stats)
        latents = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=self.generator
        )
        latents = (latents * self.pipe.vae.config.scaling_factor).to(device)
        noise = torch.randn(latents.shape, generator=self.generator).to(device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (len(batch),), generator=self.generator).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        texts = [captions[i] for i in batch]
        sizes = [latent_stats[i][:2] for i in batch]
        autocast = torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda")
        with autocast:
            embeds, pooled = self._encode_text(texts)
            extra = self._size_conditioning(pooled, sizes)
            pred = self.pipe.unet(
                noisy.to(dtype), timesteps, embeds.to(dtype), added_cond_kwargs=extra
            ).sample
        return F.mse_loss(pred.float(), target.float()), noisy.detach()

    def _size_conditioning(
        self, pooled: torch.Tensor | None, sizes: list[Any]
    ) -> dict[str, torch.Tensor] | None:
        if pooled is None:
            return None
        time_ids = []
        for (width, height), (orig_w, orig_h) in sizes:
            time_ids.append([orig_h, orig_w, 0, 0, height, width])  # SDXL's size conditioning
        return {
            "text_embeds": pooled,
            "time_ids": torch.tensor(time_ids, dtype=pooled.dtype, device=self.device),
        }

    def _encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states, SDXL's pooled embedding or None) of the captions."""
        grad = torch.enable_grad() if self.params["train_text_encoder"] else torch.no_grad()
        with grad:
            ids = [
                tok(
                    captions,
                    padding="max_length",
                    max_length=tok.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids.to(self.device)
                for tok in self.tokenizers
            ]
            if not self.sdxl:
                return self.encoders[0](ids[0])[0], None
            first = self.encoders[0](ids[0], output_hidden_states=True)
            second = self.encoders[1](ids[1], output_hidden_states=True)
            embeds = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
            return embeds, second[0]

    # --- samples -------------------------------------------------------------------------
    def sample(
        self,
        prompt: str,
        negative_prompt: str,
        *,
        steps: int,
        cfg_scale: float,
        width: int,
        height: int,
        infotext: str,
    ) -> bytes:
        """The epoch's sample image as PNG (A1111 `parameters` chunk), the adapters active."""
        for module in self.trained.values():
            module.eval()
        generator = torch.Generator("cpu").manual_seed(self.seed)
        with torch.no_grad():
            image = self.pipe(
                prompt=prompt,
                negative_prompt=negative_prompt or None,
                num_inference_steps=steps,
                guidance_scale=cfg_scale,
                width=width,
                height=height,
                generator=generator,
            ).images[0]
        info = PngInfo()
        info.add_text("parameters", infotext)
        out = io.BytesIO()
        image.save(out, "PNG", pnginfo=info)
        return out.getvalue()

    # --- output --------------------------------------------------------------------------
    def kohya_tensors(self) -> dict[str, torch.Tensor]:
        """The adapters under kohya's names, with one `.alpha` per module (fp16, as shipped)."""
        from peft import get_peft_model_state_dict

        tensors: dict[str, torch.Tensor] = {}
        alpha = torch.tensor(float(self.params["alpha"]))
        for prefix, module in self.trained.items():
            state = get_peft_model_state_dict(module, adapter_name=ADAPTER)
            if prefix != UNET_PREFIX:  # transformers 5's CLIP has no `text_model.` level
                state = {_text_model_path(k): v for k, v in state.items()}
            elif self.sdxl:  # kohya names SDXL's UNet blocks as the original model does
                layers = int(self.pipe.unet.config.layers_per_block)
                state = {sgm_unet_path(k, layers): v for k, v in state.items()}
            for peft_key, kohya_key in kohya_keys(prefix, state).items():
                tensors[kohya_key] = state[peft_key].detach().to("cpu", torch.float16).contiguous()
                tensors[kohya_key.rsplit(".", 2)[0] + ".alpha"] = alpha.to(torch.float16)
        return tensors

    def kohya_file(
        self,
        *,
        output_name: str,
        base_name: str,
        base_sha256: str,
        architecture: str | None = None,
    ) -> bytes:
        """The LoRA as A1111 and Civitai expect it: kohya keys, ss_* metadata and the
        sshs_* hashes A1111 shows as the LoRA's short hash."""
        from safetensors.torch import save

        p = self.params
        tensors = self.kohya_tensors()
        metadata = training_metadata(
            family=self.family,
            output_name=output_name,
            base_name=base_name,
            base_sha256=base_sha256,
            rank=p["rank"],
            alpha=p["alpha"],
            epochs=p["epochs"],
            epoch=self.epoch,
            steps=self.global_step,
            learning_rate=p["learning_rate"],
            resolution=p["resolution"],
            repeats=p["repeats"],
            captions=self.captions,
            train_text_encoder=p["train_text_encoder"],
            seed=self.seed,
        )
        if architecture:  # the base's config (a tiny demo base cannot be told from its shapes)
            metadata[ARCHITECTURE_METADATA_KEY] = architecture
        bare = save(tensors, metadata)
        metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = _addnet_hashes(bare)
        return save(tensors, metadata)

    def output_file(self, **names: Any) -> bytes:
        """The epoch's model file as A1111 reads it (a LoRA here)."""
        return self.kohya_file(**names)

    # --- resumable state -----------------------------------------------------------------
    def state_bytes(self) -> bytes:
        """Everything needed to go on after this epoch: read back with weights_only loading
        (tensors, numbers, strings: no pickled code)."""
        from peft import get_peft_model_state_dict

        state = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "adapters": {
                prefix: get_peft_model_state_dict(module, adapter_name=ADAPTER)
                for prefix, module in self.trained.items()
            },
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "generator": self.generator.get_state(),
            **self._extra_state(),
        }
        out = io.BytesIO()
        torch.save(state, out)
        return out.getvalue()

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """A subclass's own trained tensors, read back before the optimizer's state."""

    def load_state(self, data: bytes) -> None:
        from peft import set_peft_model_state_dict

        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if set(state["adapters"]) != set(self.trained):
            raise ValueError("the saved state was trained with other modules")
        for prefix, module in self.trained.items():
            set_peft_model_state_dict(module, state["adapters"][prefix], adapter_name=ADAPTER)
            for param in _lora_parameters(module):
                param.requires_grad_(True)
                param.data = param.data.float()
        self._load_extra_state(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])


def _text_model_path(key: str) -> str:
    """kohya names CLIP modules from `text_model.`, as transformers 4 nested them."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


def _lora_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for name, p in module.named_parameters() if "lora_" in name]


def _addnet_hashes(data: bytes) -> tuple[str, str]:
    """kohya's (and A1111's) hashes of a safetensors file: sha256 of the tensor data after the
    header, and the legacy one (64 KiB at 1 MiB into the file, first 8 hex)."""
    header = 8 + int.from_bytes(data[:8], "little")
    legacy = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return hashlib.sha256(data[header:]).hexdigest(), legacy


def epochs_total(params: TrainParams) -> int:
    return max(1, int(params["epochs"]))


def loss_of(losses: list[float]) -> float:
    """An epoch's loss as the page shows it: the mean of its steps' losses."""
    finite = [v for v in losses if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")
