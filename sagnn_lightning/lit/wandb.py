"""W&B logger that never prompts: online with an API key, offline without one.

``WandbLogger(offline=None)`` (the default) decides once, when the logger is built:

* ``WANDB_MODE`` set by the user (``online``/``offline``/``disabled``/``dryrun``) is respected;
* otherwise online when an API key is configured — ``WANDB_API_KEY`` or a ``~/.netrc`` (``$NETRC``)
  entry for the W&B host (``wandb login`` writes it) —, else offline: runs are written under
  ``<save_dir>/wandb/offline-run-*`` and can be uploaded later with ``wandb sync <dir>``.

Offline mode opens no network connection and asks nothing.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_info

DEFAULT_PROJECT = "sagnn-lightning"


def wandb_api_key_configured(environ: dict[str, str] | None = None) -> bool:
    """True when W&B can authenticate without prompting (env var or netrc entry for the W&B host)."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(env.get("NETRC", Path.home() / ".netrc")).expanduser()
    if not path.is_file():
        return False
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def resolve_offline(offline: bool | None, environ: dict[str, str] | None = None) -> bool:
    """``offline`` if given; else offline unless ``WANDB_MODE`` says online or an API key is configured."""
    if offline is not None:
        return offline
    env = os.environ if environ is None else environ
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online":
        return False
    return not wandb_api_key_configured(env)


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with an automatic offline mode and a project default.

    Args:
        name: run name (default: W&B's random name).
        save_dir: folder for the ``wandb/`` run files (the CLI sets the run directory,
            ``trainer.default_root_dir``; default ``"."``).
        project: W&B project (default ``$WANDB_PROJECT`` or ``"sagnn-lightning"``).
        offline: ``None`` = automatic (see module docstring), ``True``/``False`` to force.
        log_model: upload checkpoints as artifacts (``True`` at the end, ``"all"`` as written); only
            online — ignored with a message when the run is offline.
        **kwargs: passed to Lightning's ``WandbLogger`` / ``wandb.init`` (``tags``, ``group``, ``entity``...).
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | None = None,
        project: str | None = None,
        offline: bool | None = None,
        log_model: bool | Literal["all"] = False,
        **kwargs: Any,
    ) -> None:
        offline = resolve_offline(offline)
        if offline and log_model:
            rank_zero_info("W&B is offline (no API key): checkpoints are not uploaded as artifacts (log_model ignored).")
            log_model = False
        if offline and os.environ.get("WANDB_MODE", "").strip().lower() == "disabled":
            kwargs.setdefault("mode", "disabled")
        project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        super().__init__(name=name, save_dir=save_dir or ".", project=project, offline=offline,
                         log_model=log_model, **kwargs)

    @property
    def run_dir(self) -> str | None:
        """Local folder of the W&B run (``.../wandb/offline-run-*`` or ``run-*``), once started."""
        if self._experiment is None:
            return None
        return getattr(self._experiment, "dir", None) and str(Path(self._experiment.dir).parent)
