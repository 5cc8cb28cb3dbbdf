"""How a study runs, apart from what it measures: the device, the strategy, M, compile, the
convolutions, CPU threads, the shard, and process-wide settings. None of these changes what a run is
(its config hash); some change its rounding, so each row records them.

    study.run("results/x", execution=fastvar.Execution(batch_models=64, device="cuda"))
"""
import os
from dataclasses import dataclass

import torch

from . import native
from .errors import ConfigError, Param, check_choices
from .engine.replicas import CONVS, STRATEGIES


@dataclass(frozen=True)
class Execution:
    device: str = "auto"  # auto: CUDA if present (under torchrun, the GPU LOCAL_RANK names), else the CPU
    strategy: str = "auto"  # auto: loop on CPU, vmap on CUDA (never chosen by a timing)
    batch_models: int = 16  # M, the replicas trained in one step
    compile: str = "auto"  # torch.compile of the training step; auto: on CUDA only (a CPU compile takes minutes)
    conv: str = "auto"  # gemm: im2col + a matrix product (fastvar.engine.vmap_layers); native; auto: by device and shapes
    threads: int | None = None  # torch's intra-op threads (None: as torch has them); on a CPU they change rounding
    shard: tuple[int, int] | None = None  # (I, N): train only the runs with run_index % N == I
    # glibc keeps freed memory for reuse (faster CPU steps, docs/performance.md): process-wide, so the
    # command line asks for it and a library call leaves the process as it was
    retain_freed_memory: bool = False
    cuda_graphs: str = "auto"  # replay each training step as a CUDA graph; auto: on CUDA (shapes are static)

    def __post_init__(self):
        choices = {"strategy": ("auto", *STRATEGIES), "device": ("auto", "cpu", "cuda"),
                   "compile": ("auto", "on", "off"), "conv": CONVS, "cuda_graphs": ("auto", "on", "off")}
        check_choices(self, choices)
        for name in ("batch_models", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{{}} must be at least 1, not {value}", Param(name))
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("{}, but this machine has no CUDA device", Param("device", "cuda"))
        on_cuda = self.device != "cpu" and torch.cuda.is_available()
        if self.cuda_graphs == "on" and self.strategy == "loop":
            raise ConfigError("{} needs the vmap strategy: a loop step reads each replica's coefficients on "
                              "the host, which a graph would replay as captured", Param("cuda_graphs", "on"))
        if self.cuda_graphs == "on" and not on_cuda:
            raise ConfigError("{} needs a CUDA device", Param("cuda_graphs", "on"))
        if self.conv == "implicit" and not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError("{} runs Triton kernels: it needs a CUDA device", Param("conv", "implicit"))
        if self.shard is not None and not (len(self.shard) == 2 and 0 <= self.shard[0] < self.shard[1]):
            raise ConfigError(f"{{}} needs 0 <= I < N, not {self.shard}", Param("shard", flag="--shard I/N"))

    def start(self):
        """The process-wide settings, before any work: threads (on a CPU their count changes float32
        rounding) and glibc's memory retention."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.retain_freed_memory:
            native.retain_freed_memory()

    def resolved_device(self):
        if self.device == "auto" and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu" if self.device == "auto" else self.device)

    def resolved_strategy(self, device):
        return self.strategy if self.strategy != "auto" else ("vmap" if device.type == "cuda" else "loop")

    def resolved_compile(self, device):
        """The torch.compile mode of the training step, or None (eager)."""
        return "default" if self.compile == "on" or (self.compile == "auto" and device.type == "cuda") else None

    def resolved_cuda_graphs(self, device):
        """Whether each training step replays as a CUDA graph: on CUDA under vmap unless off (a vmap
        batch is padded to M, so a study's shapes are static; its step reads nothing on the host). Never
        with the loop strategy, whose step passes host numbers a graph would freeze at their first values."""
        return device.type == "cuda" and self.resolved_strategy(device) == "vmap" and self.cuda_graphs != "off"

    def trains(self, run_index):
        """Whether this process trains run `run_index`: all runs, or this shard's."""
        return self.shard is None or run_index % self.shard[1] == self.shard[0]
