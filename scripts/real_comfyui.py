"""Set up a real ComfyUI for the real-server test tier, outside the tracked tree.

    python scripts/real_comfyui.py setup     # venv + model files; prints the paths
    python scripts/real_comfyui.py check     # exit 0 when set up, else one line why not

`COMFYUI_DIR` names a checkout of ComfyUI (it is only read: every server gets its own base,
output, input, temp and user folders, database and bytecode cache elsewhere). The venv and
the model files live in `STORYBOARD_REAL_HOME` (default `~/.cache/storyboard-real`), so a
second run, or another clone on the same machine, reuses them: a stamp of what was asked
for decides whether anything is installed again.

Torch: the default set is one whose three packages import together on a CPU-only x86-64
Linux machine (`torch==2.9.1`, `torchvision==0.24.1`, `torchaudio==2.9.*`). On a GPU machine
set `STORYBOARD_REAL_TORCH` to the set matching your driver (for example
`torch torchvision torchaudio --index-url <your PyTorch CUDA index>`); it is installed as
given, in one pip call.

Standard library only: the project's own venv need not exist to run it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS_SCRIPT = REPO / "scripts" / "real_models.py"
# Two pip calls: torchaudio 2.9 must be resolved against the torch the first call chose.
CPU_TORCH = (("torch==2.9.1", "torchvision==0.24.1"), ("torch==2.9.1", "torchaudio==2.9.*"))
# Requirements ComfyUI serves without (an error banner, then it runs): 360 MB we skip.
TORCH = frozenset({"torch", "torchvision", "torchaudio"})
SKIPPED = ("comfyui-workflow-templates", "comfyui-embedded-docs")


class SetupError(Exception):
    """One line saying what is missing and what to do."""


@dataclass(frozen=True)
class RealServer:
    comfyui_dir: Path
    home: Path

    @property
    def venv(self) -> Path:
        return self.home / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def pycache(self) -> Path:
        return self.home / "pycache"

    @property
    def stamp(self) -> Path:
        return self.venv / ".storyboard-installed"


def locate(environ: dict[str, str] | None = None) -> RealServer:
    """The ComfyUI checkout and the folder of our venv, from the environment."""
    env = os.environ if environ is None else environ
    raw = env.get("COMFYUI_DIR", "").strip()
    if not raw:
        raise SetupError(
            "COMFYUI_DIR is not set: point it at a checkout of ComfyUI (0.25.0 was tested) "
            "to run the real-server tier"
        )
    comfyui = Path(raw).expanduser().resolve()
    if not (comfyui / "main.py").is_file() or not (comfyui / "requirements.txt").is_file():
        raise SetupError(f"COMFYUI_DIR={raw} has no main.py and requirements.txt: not a ComfyUI")
    default_home = Path.home() / ".cache" / "storyboard-real"
    home = Path(env.get("STORYBOARD_REAL_HOME", "") or default_home).expanduser().resolve()
    return RealServer(comfyui, home)


def requirements(server: RealServer) -> list[str]:
    """ComfyUI's requirements without torch (installed first, pinned) and the extras."""
    wanted = []
    for line in (server.comfyui_dir / "requirements.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        name = spec.split(";")[0]
        for mark in "<>=!~[ ":
            name = name.split(mark)[0]
        name = name.lower()
        if spec and name not in TORCH and not name.startswith(SKIPPED):
            wanted.append(spec)
    return wanted


def torch_calls(environ: dict[str, str] | None = None) -> tuple[tuple[str, ...], ...]:
    env = os.environ if environ is None else environ
    custom = env.get("STORYBOARD_REAL_TORCH", "").split()
    return (tuple(custom),) if custom else CPU_TORCH


def wanted_stamp(server: RealServer) -> str:
    text = repr((torch_calls(), requirements(server), sys.version_info[:2]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def installed(server: RealServer) -> bool:
    return server.stamp.is_file() and server.stamp.read_text() == wanted_stamp(server)


def _pip(server: RealServer, *args: str) -> None:
    command = [str(server.python), "-m", "pip", "install", "--quiet", *args]
    print("+ " + " ".join(command[3:]), flush=True)
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise SetupError(f"pip install {' '.join(args)} failed (exit {done.returncode}); see above")


def install(server: RealServer) -> None:
    if installed(server):
        return
    server.home.mkdir(parents=True, exist_ok=True)
    if not server.python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(server.venv)], check=True)
    for call in torch_calls():
        _pip(server, *call)
    _pip(server, *requirements(server))
    probe = "import torch, torchvision, torchaudio; print(torch.__version__)"
    done = subprocess.run([str(server.python), "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupError(f"torch, torchvision and torchaudio do not import together: {last}")
    server.stamp.write_text(wanted_stamp(server))


def write_models(server: RealServer) -> None:
    done = subprocess.run(
        [str(server.python), str(MODELS_SCRIPT), str(server.models)],
        env={**os.environ, "PYTHONPYCACHEPREFIX": str(server.pycache)},
        check=False,
    )
    if done.returncode != 0:
        raise SetupError(f"writing the model files failed (exit {done.returncode}); see above")


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "setup"
    try:
        server = locate()
        if command == "check":
            if not installed(server):
                raise SetupError(f"no venv set up in {server.venv}: run `make test-real`")
            return 0
        if command != "setup":
            print(f"usage: {sys.argv[0]} [setup|check]", file=sys.stderr)
            return 2
        install(server)
        write_models(server)
    except SetupError as exc:
        print(f"real ComfyUI: {exc}", file=sys.stderr)
        return 1
    print(f"real ComfyUI: {server.comfyui_dir} with {server.python}, models in {server.models}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
