"""Peak memory of an "Add difference" merge (A + M(B - C)) against the size of its inputs.

    python bench/bench_merge.py            # BENCH_MERGE_MB=128 per input by default

Three synthetic checkpoints in SD1's key layout (float32, UNet-sized tensors of 2-10 MiB) are
merged three ways, each in a fresh process; the figure is the process's peak resident set
(VmHWM) above what it held after importing torch, so the interpreter and torch are not counted:
  whole     A1111's way: the three state dicts loaded whole (safetensors load_file), merged,
            saved with save_file
  safe_open gpu_worker.merging's streaming writer reading through safetensors.safe_open
            (mmap: every page read stays in the resident set until the file is closed)
  atelier   gpu_worker.merging as the worker runs it (pread of one tensor at a time)
Goal: atelier's peak is a few of the largest tensors (10 MiB here), whatever the inputs weigh.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INPUT_MB = int(os.environ.get("BENCH_MERGE_MB", "128"))
MiB = 1 << 20


def vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def reset_hwm() -> None:
    # writing 5 to clear_refs resets the peak (Linux); without it the import peak would count
    Path("/proc/self/clear_refs").write_text("5")


def make_inputs(folder: Path) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    paths = []
    for seed in (1, 2, 3):
        generator = torch.Generator().manual_seed(seed)
        tensors: dict[str, Any] = {}
        total, index = 0, 0
        while total < INPUT_MB * MiB:
            rows = 512 + 128 * (index % 16)  # 2-10 MiB tensors, like a UNet's
            key = f"model.diffusion_model.input_blocks.{index % 12}.{index}.weight"
            tensors[key] = torch.randn(rows, 1024, generator=generator)
            total += rows * 1024 * 4
            index += 1
        tensors["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(8)
        path = folder / f"input-{seed}.safetensors"
        save_file(tensors, str(path), metadata={"atelier.architecture": "sd1"})
        paths.append(path)
        del tensors
    return paths


def child(mode: str, folder: Path) -> None:
    import torch  # noqa: F401 - imported before the baseline is taken

    from gpu_worker import merging
    from gpu_worker.params import MergeParams

    a, b, c = (folder / f"input-{i}.safetensors" for i in (1, 2, 3))
    out = folder / f"out-{mode}.safetensors"
    reset_hwm()
    base = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    if mode == "whole":
        from safetensors.torch import load_file, save_file

        ta, tb, tc = load_file(str(a)), load_file(str(b)), load_file(str(c))
        merged = {k: ta[k] + 0.5 * (tb[k] - tc[k]) for k in ta}
        save_file(merged, str(out))
    else:
        if mode == "safe_open":
            merging.TensorFile = SafeOpenFile  # type: ignore[misc,assignment]
        pinned = {"name": "x", "sha256": "0" * 64, "size_bytes": 0}
        params: MergeParams = {
            "method": "Add difference",
            "primary": pinned,  # type: ignore[typeddict-item]
            "secondary": pinned,  # type: ignore[typeddict-item]
            "tertiary": pinned,  # type: ignore[typeddict-item]
            "multiplier": 0.5,
            "block_weights": None,
            "save_as_half": False,
            "bake_in_vae": None,
            "discard_weights": "",
            "name": "bench",
        }
        merging.write_merge(params, {"primary": a, "secondary": b, "tertiary": c}, {}, out)
    print(vm_hwm_kb() - base)


class SafeOpenFile:
    """gpu_worker.merging.TensorFile's interface over safetensors.safe_open (mmap)."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        from gpu_worker.model_files import read_safetensors_header

        self.header = read_safetensors_header(path)
        self.handle = safe_open(str(path), framework="pt")
        self.file = self.handle.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.handle.__exit__(None, None, None)

    def __contains__(self, key: str) -> bool:
        return key in self.header and key != "__metadata__"

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.header.get("__metadata__") or {})

    def get(self, key: str) -> Any:
        return self.file.get_tensor(key)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1].startswith("--child="):
        child(sys.argv[1].split("=", 1)[1], Path(sys.argv[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inputs = make_inputs(folder)
        total_kb = sum(p.stat().st_size for p in inputs) // 1024
        print(f"inputs: 3 x {INPUT_MB} MiB = {total_kb // 1024} MiB")
        peaks = {}
        for mode in ("whole", "safe_open", "atelier"):
            result = subprocess.run(
                [sys.executable, __file__, f"--child={mode}", str(folder)],
                capture_output=True,
                text=True,
                check=True,
            )
            peaks[mode] = int(result.stdout.strip().splitlines()[-1])
            print(
                f"{mode:>9}: peak {peaks[mode] // 1024:5d} MiB above torch, "
                f"{peaks[mode] / total_kb:6.1%} of the inputs"
            )
        print(
            f"atelier vs whole: {peaks['whole'] / max(peaks['atelier'], 1):.1f}x less peak memory; "
            f"vs safe_open: {peaks['safe_open'] / max(peaks['atelier'], 1):.1f}x less"
        )


if __name__ == "__main__":
    main()
