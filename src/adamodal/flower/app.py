"""The Flower app folder a run is submitted as (``flwr run DIR CONNECTION``).

The folder holds only a ``pyproject.toml``: its components point at the installed package
(``adamodal.flower.server_app:app`` and ``adamodal.flower.client_app:app``) and its run
config carries the fully resolved adamodal config as TOML text, so the ServerApp and every
ClientApp compute with exactly the same config (and therefore the same scenario and seeds)
without any file having to be copied to the sites. adamodal must be installed on every
machine; Flower's runtime dependency installation stays off (offline sites).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from adamodal import __version__
from adamodal.config import Config

#: the run config key holding the resolved adamodal config (TOML text)
CONFIG_KEY = "adamodal-config"
#: seconds a phase waits for the SuperNodes' replies before counting the silent ones as dropped
DEFAULT_TIMEOUT = 600.0
#: seconds the ServerApp waits for every client's SuperNode to join before starting
DEFAULT_WAIT = 120.0


def app_pyproject(cfg: Config, out_dir: Path, *, resume: bool = False, force: bool = False,
                  timeout: float = DEFAULT_TIMEOUT, wait: float = DEFAULT_WAIT) -> dict[str, Any]:
    return {
        "project": {
            "name": "adamodal-run", "version": __version__, "license": "Apache-2.0",
            "description": f"adamodal: {cfg['method']} on {cfg['dataset']}",
            "dependencies": [f"adamodal=={__version__}"],
        },
        "tool": {"flwr": {"app": {
            "publisher": "adamodal",
            "components": {
                "serverapp": "adamodal.flower.server_app:app",
                "clientapp": "adamodal.flower.client_app:app",
            },
            "config": {
                CONFIG_KEY: cfg.to_toml(), "out-dir": str(Path(out_dir).resolve()), "resume": bool(resume),
                "force": bool(force), "reply-timeout": float(timeout), "wait-nodes": float(wait),
            },
        }}},
    }


def write_app(app_dir: Path, cfg: Config, out_dir: Path, **options: Any) -> Path:
    """Write the app folder for one run; returns it."""
    app_dir = Path(app_dir)
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(app_pyproject(cfg, out_dir, **options)), encoding="utf-8")
    return app_dir
