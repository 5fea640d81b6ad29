"""A ComfyUI-compatible server for tests, the demo and benchmarks (see `faults` for failures).

async with serve_simulator(SimulatorConfig(steps=4, step_s=0.01)) as sim:
    ...  # sim.url, sim.ws_url, sim.runs, sim.faults, sim.submissions, sim.seen_headers

SimulatorConfig also sets what warming up costs (load_s, lora_switch_s,
reference_s; see `warm`) and an authenticating proxy in front (require_headers,
see `gate`). Every picture it makes carries a SIMULATED banner.
"""

from storyboard.simulator.config import DEFAULT_MODELS, SimulatorConfig
from storyboard.simulator.faults import Faults
from storyboard.simulator.render import FrameSpec, render_frame
from storyboard.simulator.server import ListenError, SimulatorThread, serve_simulator
from storyboard.simulator.simulator import ComfyUISimulator
from storyboard.simulator.state import RunRecord

__all__ = [
    "DEFAULT_MODELS",
    "ComfyUISimulator",
    "Faults",
    "FrameSpec",
    "ListenError",
    "RunRecord",
    "SimulatorConfig",
    "SimulatorThread",
    "render_frame",
    "serve_simulator",
]
