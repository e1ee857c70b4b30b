"""Textual inversion (A1111's "Train embedding") on the LoRA trainer's loop.

Only the new embedding's vectors learn: N vectors per text encoder (SDXL: clip_l and clip_g),
initialised from the token embeddings of an init text as A1111 does. They enter the text
encoder exactly as the generator puts an embedding in (prompt_encoding's hook over the token
embedding's output, at the positions tokenize_prompt reserves for the name), so what is trained
is what the generator later uses. Dataset, buckets, noise, steps, resume and transport are
LoraTrainer's; the output is an A1111 embedding file.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL.PngImagePlugin import PngInfo

from gpu_worker.model_files import ARCHITECTURE_METADATA_KEY
from gpu_worker.prompt_chunks import tokenize_prompt
from gpu_worker.prompt_encoding import (
    Embedding,
    chunk_ids,
    embedding_hook,
    encode_prompt_pair,
    encode_prompt_pair_xl,
)
from gpu_worker.training import LoraTrainer
from gpu_worker.training_rules import embedding_metadata


def init_vectors(encoder: Any, tokenizer: Any, init_text: str, count: int) -> torch.Tensor:
    """A1111's initialisation: vector i is the init text's token i*len/count (zeros without
    an init text)."""
    table = getattr(encoder, "text_model", encoder).embeddings.token_embedding.weight
    vectors = torch.zeros(count, table.shape[1])
    ids = tokenizer(init_text, add_special_tokens=False).input_ids if init_text else []
    if ids:
        embedded = table[torch.tensor(ids)].detach().float().cpu()
        for i in range(count):
            vectors[i] = embedded[i * len(ids) // count]
    return vectors


class EmbeddingTrainer(LoraTrainer):
    """LoraTrainer whose trainable parameters are one embedding's vectors."""

    def _inject_adapters(self) -> dict[str, torch.nn.Module]:
        for module in [self.pipe.unet, *self.encoders, self.pipe.vae]:
            module.requires_grad_(False)
        p = self.params
        self.name = p["output_name"]
        self.vectors = [
            torch.nn.Parameter(
                init_vectors(encoder, tokenizer, p["init_text"], p["num_vectors"]).to(self.device)
            )
            for encoder, tokenizer in zip(self.encoders, self.tokenizers, strict=True)
        ]
        return {}

    def _trainable(self) -> list[torch.nn.Parameter]:
        return list(self.vectors)

    def embedding(self) -> Embedding:
        return Embedding(name=self.name, vectors=tuple(self.vectors))

    def _encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The captions' first 75-token chunk each, the embedding's vectors written in where
        its name stands (gradients reach only them)."""
        embeddings = {self.name: self.embedding()}
        chunks = [tokenize_prompt(self.tokenizers[0], c, embeddings)[0] for c in captions]
        hidden, pooled = [], None
        for index, (encoder, tok) in enumerate(zip(self.encoders, self.tokenizers, strict=True)):
            pad = tok.pad_token_id if self.sdxl else None
            ids = [chunk_ids(c, tok.bos_token_id, tok.eos_token_id, pad) for c in chunks]
            with embedding_hook(encoder, chunks, embeddings, index):
                out = encoder(torch.tensor(ids, device=self.device), output_hidden_states=True)
            if not self.sdxl:
                return out[0], None
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(hidden, dim=-1), pooled

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
        """The epoch's sample through the generator's own prompt encoding, the embedding in."""
        embeddings = {self.name: Embedding(self.name, tuple(v.detach() for v in self.vectors))}
        if self.sdxl:
            embeds = encode_prompt_pair_xl(
                self.pipe, prompt, negative_prompt, clip_skip=1, embeddings=embeddings
            )
        else:
            cond, uncond = encode_prompt_pair(
                self.pipe, prompt, negative_prompt, clip_skip=1, embeddings=embeddings
            )
            embeds = {"prompt_embeds": cond, "negative_prompt_embeds": uncond}
        generator = torch.Generator("cpu").manual_seed(self.seed)
        with torch.no_grad():
            image = self.pipe(
                **embeds,
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

    def embedding_file(
        self,
        *,
        output_name: str,
        base_name: str,
        base_sha256: str,
        architecture: str | None = None,
    ) -> bytes:
        """An A1111 embedding: `emb_params` (SD1) or `clip_l` + `clip_g` (SDXL), fp32 as A1111
        saves them, with A1111's name, step and checkpoint in the metadata."""
        from safetensors.torch import save

        detached = [v.detach().to("cpu", torch.float32).contiguous() for v in self.vectors]
        tensors = (
            {"clip_l": detached[0], "clip_g": detached[1]}
            if self.sdxl
            else {"emb_params": detached[0]}
        )
        metadata = embedding_metadata(
            name=output_name,
            step=self.global_step,
            base_name=base_name,
            base_sha256=base_sha256,
            family=self.family,
        )
        if architecture:  # the base's config (a tiny demo base cannot be told from its shapes)
            metadata[ARCHITECTURE_METADATA_KEY] = architecture
        return bytes(save(tensors, metadata))

    def output_file(self, **names: Any) -> bytes:
        return self.embedding_file(**names)

    def _extra_state(self) -> dict[str, Any]:
        return {"vectors": [v.detach().cpu() for v in self.vectors]}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for vector, saved in zip(self.vectors, state["vectors"], strict=True):
                vector.copy_(saved.to(vector))
