"""`python -m flows.image_batch` as a user runs it: a separate process on the embedded
default (Prefect's ephemeral API, no server), STORYBOARD_* pointing at a temporary data dir
and a simulator this test starts. Its exit status and last lines are what is checked, and
what a signal in the middle of a render leaves on the server and in the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flows.cli import INTERRUPTED
from flows.image_batch import image_batch
from storyboard.store import RELEASED_ERROR, ImageJob
from tests.support.paths import REPO
from tests.support.prefect_db import QUIET_PREFECT, seed_home
from tests.support.processes import ProcessTree
from tests.support.reliability import PROJECT, Tiny, carries, prompt_of

pytestmark = pytest.mark.slow  # each test starts a batch process (most on an embedded API)

# Booting the ephemeral API (a fresh SQLite file on the first run) on a busy machine.
BOOT_S = 90.0
# Ctrl-C / SIGTERM must end the batch within this (the issue: "within a few seconds").
STOP_S = 8.0


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory, prefect_db: Path) -> Path:
    """One Prefect home for the module's processes, its database migrated already."""
    return seed_home(tmp_path_factory.mktemp("prefect-home"), prefect_db)


@pytest.fixture
def batch_env(tiny: Tiny, prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        **QUIET_PREFECT,
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=str(int(BOOT_S)),
    )
    return env


class Batch:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows.image_batch"],
            cwd=REPO,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._out.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._out.close()


def starter(env: dict[str, str], tmp_path: Path) -> Iterator[type[Batch]]:
    started: list[Batch] = []

    class Started(Batch):
        def __init__(self) -> None:
            super().__init__(env, tmp_path / f"batch-{len(started)}.log")
            started.append(self)

    yield Started
    for batch in started:
        batch.kill()


@pytest.fixture
def start_on_a_fresh_home(batch_env: dict[str, str], tmp_path: Path) -> Iterator[type[Batch]]:
    """A batch process on the embedded API in a Prefect home never used: a user's first run,
    its database migrated by the batch itself."""
    yield from starter({**batch_env, "PREFECT_HOME": str(tmp_path / "fresh-home")}, tmp_path)


@pytest.fixture
def start_on_test_api(
    batch_env: dict[str, str], tmp_path: Path, prefect_api: None
) -> Iterator[type[Batch]]:
    """A batch process on the session's test API: for what does not depend on which API the
    batch reports to, it spares booting an embedded one (~15 s of CPU each)."""
    from prefect.settings import get_current_settings

    env = {**batch_env, "PREFECT_API_URL": str(get_current_settings().api.url)}
    yield from starter(env, tmp_path)


def last_lines(text: str, n: int = 2) -> list[str]:
    """The last lines, less Prefect's own "Stopping temporary server" line at exit."""
    lines = [line for line in text.splitlines() if line.strip()]
    return [line for line in lines if "Stopping temporary server" not in line][-n:]


def test_a_batch_run_from_the_shell_exits_0_with_the_runs_message(
    tiny: Tiny, start_on_a_fresh_home: type[Batch]
) -> None:
    batch = start_on_a_fresh_home()
    code = batch.wait(timeout=BOOT_S + 60)
    out = batch.output()
    assert code == 0, out
    assert last_lines(out, 1) == ["image-batch: Completed: 3 sentence(s): 3 completed"], out
    assert "Traceback" not in out
    assert all(tiny.sentence(sid).status == "completed" for sid in tiny.sentence_ids)
    [gpu] = last_lines(out, 2)[:1]  # under the table: what the run's renders took
    assert gpu.startswith("GPU time: ") and gpu.endswith(" s in 3 attempt(s)"), out


def test_a_failed_sentence_ends_the_process_with_the_message_not_a_traceback(
    tiny: Tiny, start_on_test_api: type[Batch]
) -> None:
    tiny.store.update_sentence(PROJECT, "s2", lora_name="noir_v2.safetensors")
    batch = start_on_test_api()
    code = batch.wait(timeout=BOOT_S + 60)
    out = batch.output()
    assert code == 1, out
    assert last_lines(out, 1) == [
        "image-batch: Failed: 1 of 3 sentence(s) failed (2 completed, 1 failed)"
    ], out
    assert "Traceback" not in out and "TypeError" not in out, out
    assert tiny.sentence("s2").status == "failed"


def test_a_sentence_that_exhausts_its_attempts_is_one_line_not_a_traceback(
    tiny: Tiny, start_on_test_api: type[Batch]
) -> None:
    tiny.sim.faults.fail_matching(lambda graph: carries(graph, prompt_of("s2")), "sampler broke")
    batch = start_on_test_api()
    code = batch.wait(timeout=BOOT_S + 60)
    out = batch.output()

    assert code == 1, out
    assert "Traceback" not in out, out
    [line] = [line for line in out.splitlines() if "Retries are exhausted" in line]
    assert "sampler broke" in line, line
    assert [job.attempt for job in tiny.store.jobs_for(PROJECT, "s2")] == [1, 2, 3]
    assert tiny.sentence("s2").status == "failed"


@pytest.mark.usefixtures("prefect_api")
def test_a_failed_batch_called_from_python_raises_its_message_not_a_type_error(
    tiny: Tiny,
) -> None:
    tiny.store.update_sentence(PROJECT, "s1", lora_name="noir_v2.safetensors")
    with pytest.raises(Exception, match=r"^1 of 1 sentence\(s\) failed \(1 failed\)$") as raised:
        image_batch(project_id=PROJECT, limit=1)
    assert not isinstance(raised.value, TypeError)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_render_ends_the_batch_and_leaves_nothing_behind(
    tiny: Tiny, start_on_test_api: type[Batch], signum: signal.Signals
) -> None:
    sim = tiny.sim
    # The first render runs until it is interrupted: the signal lands in the middle of it
    # however long the batch takes to act on the signal.
    sim.faults.hang_next(1)
    batch = start_on_test_api()
    deadline = time.monotonic() + BOOT_S + 30
    # Inside the first render: the server runs it and the next one waits behind it.
    while not (sim.running is not None and sim.queue_remaining() == 2):
        assert batch.process.poll() is None, batch.output()
        assert time.monotonic() < deadline, "the batch never got two prompts onto the server"
        time.sleep(0.02)

    signalled = time.monotonic()
    batch.process.send_signal(signum)
    try:
        code = batch.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_S:g} s after {signum.name}:\n{batch.output()}")
    stopped_in = time.monotonic() - signalled

    out = batch.output()
    assert code != 0, out
    if signum == signal.SIGINT:  # Ctrl-C: a line saying so, not a KeyboardInterrupt traceback
        assert code == 130, out
        assert "image-batch: interrupted" in last_lines(out, 1)[0], out
        assert "Traceback" not in out, out
    released = assert_nothing_left(tiny, out)
    # The two on the server, and the next one if it was claimed ahead already.
    assert len(released) in (2, 3), released
    assert f"released {len(released)} image job(s)" in out, out
    assert stopped_in < STOP_S


COMMANDS = {
    "storyboard-render": [str(Path(sys.executable).parent / "storyboard"), "render", PROJECT],
    "python-m-flows.image_batch": [sys.executable, "-m", "flows.image_batch", PROJECT],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(
    ("signum", "to_group", "code"),
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
    ids=["ctrl-c-to-the-group", "SIGTERM"],
)
def test_storyboard_render_stops_on_a_signal_and_leaves_no_process_behind(
    tiny: Tiny,
    batch_env: dict[str, str],
    tmp_path: Path,
    processes: ProcessTree,
    signum: signal.Signals,
    to_group: bool,
    code: int,
    command: str,
) -> None:
    """`storyboard render` (and `python -m flows.image_batch`) as a shell runs it, on the
    embedded Prefect API: Ctrl-C reaches its whole process group (the embedded API server it
    started too), SIGTERM only the process. Either way it ends within a few seconds with its
    own line and exit status, our prompts off the server, nothing `generating`, its jobs
    released, and no process it started still running."""
    sim = tiny.sim
    # The first render runs until it is interrupted: the signal lands in it however long the
    # batch takes to act on the signal, and the interrupt ends it at once.
    sim.faults.hang_next(1)
    log = tmp_path / "render.log"
    started: set[int] = set()
    with log.open("wb") as out:
        process = subprocess.Popen(
            COMMANDS[command],
            cwd=REPO,
            env=batch_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, as a shell's foreground job
        )
    try:
        deadline = time.monotonic() + BOOT_S + 30
        while not (sim.running is not None and sim.queue_remaining() >= 1):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the batch never got a prompt onto the server"
            time.sleep(0.02)
        started = processes.descendants(process.pid)
        assert not sim.runs, "the first render ended before the signal: too slow a machine"
        assert started, "the embedded Prefect API runs in a process of its own"

        signalled = time.monotonic()
        if to_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        try:
            exit_code = process.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_S:g} s after {signum.name}:\n{log.read_text()}")
        stopped_in = time.monotonic() - signalled
        print(f"{command} {signum.name}: exited {exit_code} in {stopped_in:.2f} s")
        out_text = log.read_text(errors="replace")
        assert exit_code == code, out_text
        assert last_lines(out_text, 1) == [INTERRUPTED], out_text
        assert "Traceback" not in out_text, out_text
        # The embedded API outlived the signal: every log line and state reached it.
        assert "Error logging to API" not in out_text, out_text
        assert stopped_in < STOP_S
        assert_nothing_left(tiny, out_text)
        assert sim.queue_remaining() == 0, sim.queue()
        left = sorted(pid for pid in started if processes.alive(pid))
        assert left == [], f"still running after the batch ended: {left}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for pid in started:
            if processes.alive(pid):
                os.kill(pid, signal.SIGKILL)


def assert_nothing_left(tiny: Tiny, out: str) -> list[ImageJob]:
    """After a signal: our prompts left the server (the queued one deleted, the running one
    interrupted), every sentence is pending and dirty, and this run's jobs were released.
    Returns those jobs."""
    sim = tiny.sim
    # An interrupt ends the render a moment after the server has answered it.
    assert sim.queue()["queue_pending"] == [], sim.queue()
    wait_for(lambda: sim.running is None, "the interrupted render to end on the server")
    assert [r.status for r in sim.runs] == ["interrupted"], out
    for sid in tiny.sentence_ids:
        sentence = tiny.sentence(sid)
        assert (sentence.status, sentence.image_dirty) == ("pending", True), (sid, out)
        jobs = tiny.store.jobs_for(PROJECT, sid)
        assert all(job.status != "running" for job in jobs), (sid, jobs)
    released = [job for sid in tiny.sentence_ids for job in tiny.store.jobs_for(PROJECT, sid)]
    assert released and all(job.error == RELEASED_ERROR for job in released), released
    return released


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s:g} s for {what}"
        time.sleep(0.02)
