"""Atelier GPU worker: the Django-free engine process. It needs only Redis and a models folder.

Modules, one job each:

- protocol       the message contract with the platform (torch-free, shared with Django)
- catalogue      scan models/ (A1111 folders), families, cached SHA-256 (torch-free)
- infotext       A1111 "parameters" text: build, parse, PNG chunk (torch-free)
- samplers       A1111 sampler / schedule names -> diffusers schedulers (listing torch-free)
- prompt_syntax  emphasis, BREAK, <lora:...> parsing (torch-free)
- clip_vocab     the CLIP tokenizer files from open-clip's vocabulary, offline (torch-free)
- prompt_chunks  A1111's 75-token chunking (torch-free, shared with the token counter)
- token_count    CLIP token counts per chunk with `tokenizers` (torch-free, for the platform)
- prompt_encoding  A1111-style chunked, weighted encoding; textual-inversion embeddings
- conditioning_schedule  prompt editing / alternation: the conditioning switched per step
- noise          variation seeds: A1111's slerp of seed and subseed noise, seed resize
- tiling         circular padding in the UNet and VAE for seamless images
- upscalers      ESRGAN / Real-ESRGAN models (our own loader) and tiled upscaling
- loading        single-file / folder checkpoints, VAEs, offline configs (configs/)
- demo_model     tiny random-weight demo models in the original key layout
- model_cache    LRU of pipelines under a device budget with a CPU-RAM tier
- engine         runs one GenerationRequest: txt2img, img2img, hires fix, batches, LoRA
- progress       throttled job.progress to the channel layer, cancel flags from Redis
- heartbeat      the worker's status in Redis with a TTL
- service        the Dramatiq actor, job events to the platform, worker lifecycle
- __main__       `python -m gpu_worker` (worker, generate, make-demo-model, scan)

Nothing here runs at import time and no module imports torch unless it needs it.
"""
