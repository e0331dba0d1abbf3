"""``imgclf serve``'s settings as types: ``conf/serve.yaml``, checked by :func:`imgclf.settings.typed`.

The server is handed the :class:`ServeSettings` object (``READ_ONLY``): it only reads the values,
once, to build the server; what no type says (the hosts LitServe binds to, the ranges) is checked in
``__post_init__``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from imgclf.errors import ImgclfError
from imgclf.settings import Paths, Schema, at_least

HOSTS = ("0.0.0.0", "127.0.0.1", "::")
ACCELERATORS = ("cpu", "cuda", "auto")


@dataclass
class ServeSettings(Schema):
    CONFIG: ClassVar[str] = "conf/serve.yaml"
    READ_ONLY: ClassVar[bool] = True

    task_name: str = "serve"
    paths: Paths = field(default_factory=Paths)
    ckpt_path: str = "data/trained_model/model.ckpt"
    host: str = "0.0.0.0"
    port: int = 5000
    accelerator: str = "cpu"
    workers_per_device: int = 1
    max_batch_size: int = 8
    batch_timeout: float = 0.01
    max_payload_mb: float = 20
    max_image_pixels: int = 40_000_000
    runtime: str = "auto"  # torch, onnx or auto: imgclf.inference.runtimes checks it with precision
    precision: str = "auto"
    channels_last: bool = True
    timeout: float = 30
    max_queue: int = 64
    max_uploads: int = 32
    body_timeout_s: float = 30
    header_timeout_s: float = 10
    max_header_kb: int = 64
    keep_alive_timeout_s: float = 5
    limit_concurrency: int = 256
    shutdown_timeout: float = 30
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    api_docs: bool = False
    num_api_servers: Optional[int] = None
    fast_queue: bool = False
    log_level: str = "info"
    access_log: bool = True

    def __post_init__(self) -> None:
        """What no type says: the choices and the ranges."""
        if self.host not in HOSTS:
            raise ImgclfError(f"host={self.host}: LitServe binds to one of {', '.join(HOSTS)}")
        if self.accelerator not in ACCELERATORS:
            raise ImgclfError(f"accelerator={self.accelerator}: use one of {', '.join(ACCELERATORS)}")
        at_least(
            ("max_batch_size", self.max_batch_size, 1),
            ("workers_per_device", self.workers_per_device, 1),
            ("max_queue", self.max_queue, 0),
            ("max_uploads", self.max_uploads, 1),
            ("limit_concurrency", self.limit_concurrency, 2),
            ("max_header_kb", self.max_header_kb, 1),
        )
        for key in ("body_timeout_s", "header_timeout_s", "keep_alive_timeout_s"):
            if getattr(self, key) <= 0:
                raise ImgclfError(f"{key}={getattr(self, key)}: use a positive number of seconds, e.g. 10")
        if self.batch_timeout < 0:
            raise ImgclfError(f"batch_timeout={self.batch_timeout}: use a number of seconds, e.g. 0.05")
        if self.shutdown_timeout < 0:
            raise ImgclfError(f"shutdown_timeout={self.shutdown_timeout}: use a number of seconds, e.g. 30")
        if self.max_payload_mb <= 0:
            raise ImgclfError(f"max_payload_mb={self.max_payload_mb}: use a positive number")
