"""Network architectures: the classifiers (:mod:`.architectures`) and denoisers smoothcert trains.

Model files (``model.safetensors`` + ``model.json``) are read and written by :mod:`smoothcert.io.checkpoints`.
"""

from typing import Any

_MOVED = {
    name: "smoothcert.io.checkpoints"
    for name in ("load_model", "save_model", "load_denoiser", "checkpoint_sha256", "versions", "CheckpointError")
}
_MOVED["import_checkpoint"] = "smoothcert.io.importing"
_MOVED.update({"DnCNN": "smoothcert.models.denoisers", "compose": "smoothcert.models.denoisers"})


def __getattr__(name: str) -> Any:
    """Names that ``smoothcert.models`` held in 0.1 fail with the module that holds them now."""
    if name in _MOVED:
        raise AttributeError(f"smoothcert.models.{name} moved to {_MOVED[name]} in smoothcert 0.2: import it there")
    raise AttributeError(f"module 'smoothcert.models' has no attribute {name!r}")
