"""The worker spec: everything a training worker process needs, typed, with a JSON round trip.

A spec crosses the process boundary as a JSON file (``python -m mpcore.run.worker SPEC.json``).
Every default lives here, once: the parent builds a :class:`WorkerSpec`, the worker reads the
same class back, and neither side looks keys up with ``dict.get(key, default)``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mpcore.names import VALIDATION_FRACTION, name_of
from mpcore.run.files import write_text_atomic
from mpcore.run.schema import mode_of, strategy_of


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """One configuration to train in a worker process (or in each worker of a local cluster)."""

    #: ``precision``, ``xla`` and, for a distributed configuration, ``strategy``.
    config: dict[str, str]
    #: :class:`mpcore.train.settings.TrainSettings` fields (``to_dict()``).
    settings: dict[str, Any]
    data_root: str
    #: Where the worker (the chief, in a cluster) writes the configuration's record.
    result_path: str
    validation_fraction: float = VALIDATION_FRACTION
    #: Images the parent found undecodable and left out (``--skip-bad-images``).
    skipped_images: tuple[str, ...] = ()
    tensorboard_dir: str | None = None
    #: Keras ``fit`` verbosity (1: progress bar, 2: a line per epoch).
    verbose: int = 0
    #: The worker exits when this process dies (None: do not watch).
    parent_pid: int | None = None
    #: Logical CPU devices to split the CPU into for ``mirrored`` (0: leave it whole).
    cpu_replicas: int = 0
    #: Multi-worker only: the folder where every worker writes ``worker-INDEX.json``.
    worker_dir: str | None = None
    #: The index of the repeat this worker trains (0-based; None: the warm-up or a cluster).
    repeat: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "skipped_images", tuple(self.skipped_images))

    @property
    def name(self) -> str:
        """The configuration's label, e.g. ``mixed_float16+xla_off@mirrored``."""
        return name_of(self.config)

    @property
    def strategy(self) -> str:
        return strategy_of(self.config)

    @property
    def mode(self) -> dict[str, str]:
        """The ``RunConfig`` fields (precision and XLA, without the strategy)."""
        return mode_of(self.config)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        fields = json.loads(text)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"worker spec has unknown field(s): {', '.join(unknown)}")
        return cls(**fields)

    def write(self, path: Path) -> Path:
        write_text_atomic(Path(path), self.to_json() + "\n")
        return Path(path)

    @classmethod
    def read(cls, path: str | Path) -> WorkerSpec:
        return cls.from_json(Path(path).read_text())
