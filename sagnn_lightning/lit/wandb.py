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
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_info

DEFAULT_PROJECT = "sagnn-lightning"


def wandb_api_key_configured(environ: Mapping[str, str] | None = None) -> bool:
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
        id: str | None = None,  # noqa: A002 - wandb's own name for the run id
        **kwargs: Any,
    ) -> None:
        offline = resolve_offline(offline)
        if offline and log_model:
            rank_zero_info(
                "W&B is offline (no API key): checkpoints are not uploaded as artifacts (log_model ignored)."
            )
            log_model = False
        if offline and os.environ.get("WANDB_MODE", "").strip().lower() == "disabled":
            kwargs.setdefault("mode", "disabled")
        project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        super().__init__(
            name=name, save_dir=save_dir or ".", project=project, offline=offline, log_model=log_model, id=id, **kwargs
        )
        # Lightning 2.6 always passes ``anonymous`` to ``wandb.init``, and wandb >= 0.19 warns about any value of
        # that deprecated setting; we never use it (Lightning range pinned in pyproject, tested without the warning)
        init = getattr(self, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)


def active_run():
    """The W&B run of this process (``wandb.run``) or ``None``; never imports or starts W&B."""
    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


def active_run_dir() -> str | None:
    """Local folder of this process's W&B run (``.../wandb/offline-run-*`` or ``run-*``), if one is running."""
    run = active_run()
    directory = getattr(run, "dir", None) if run is not None else None
    return str(Path(directory).parent) if directory else None


def active_run_id() -> str | None:
    """Id of this process's W&B run, if one is running (stored in checkpoints so that a resume continues it)."""
    run = active_run()
    return getattr(run, "id", None) if run is not None else None


#: checkpoint key holding the W&B run id (written by ``SAGNNModule.on_save_checkpoint``)
CHECKPOINT_RUN_ID_KEY = "wandb_run_id"


def run_id_in_checkpoint(path: str | os.PathLike) -> str | None:
    """The W&B run id stored in checkpoint ``path``, or ``None`` (no such file, none stored, unreadable)."""
    path = Path(path)
    if not path.is_file():
        return None
    import torch

    try:  # memory-mapped: only the small dict is read, not the weights
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not ours to judge here; loading the checkpoint reports it properly
        return None
    run_id = checkpoint.get(CHECKPOINT_RUN_ID_KEY) if isinstance(checkpoint, dict) else None
    return str(run_id) if run_id else None


def configure_wandb_run(
    init_args: MutableMapping[str, Any], run_dir: str | os.PathLike | None, resumed: Path | None
) -> None:
    """Where a run's W&B files go and which W&B run it continues: the one place that decides it.

    ``init_args`` are the ``WandbLogger``'s (the CLI's parsed ``trainer.logger.init_args``), filled in place:
    ``save_dir`` defaults to the run dir (``trainer.default_root_dir``), so the files land in
    ``<run dir>/wandb/``; a fit resumed from checkpoint ``resumed`` continues the W&B run whose id that
    checkpoint stores (Lightning passes ``resume="allow"``), unless an ``id`` was given.
    """
    if init_args.get("save_dir") in (None, ".") and run_dir is not None:
        init_args["save_dir"] = str(run_dir)
    if resumed is not None and not init_args.get("id"):
        init_args["id"] = run_id_in_checkpoint(resumed)


def configure_wandb_loggers(logger: Any, run_dir: str | os.PathLike | None, resumed: Path | None) -> bool:
    """:func:`configure_wandb_run` for every ``WandbLogger`` in a parsed ``trainer.logger`` option (one logger
    config, a list of them, or ``False``/``None``); returns whether there was one."""
    found = False
    for item in logger if isinstance(logger, list) else [logger]:
        if hasattr(item, "get") and "WandbLogger" in str(item.get("class_path", "")):
            init = item.get("init_args")
            if init is None:
                init = item["init_args"] = type(item)()
            configure_wandb_run(init, run_dir, resumed)
            found = True
    return found


def finish_active_run() -> None:
    """Close this process's W&B run (flushes an offline run to disk); Lightning's logger leaves it open."""
    run = active_run()
    if run is not None:
        run.finish()
