"""What /proc says of the processes tests start (the `processes` fixture: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path


class ProcessTree:
    """What /proc says of processes: a command's children, and whether one still runs."""

    @staticmethod
    def descendants(pid: int) -> set[int]:
        """Every process below `pid` (the parent pid is field 4 of /proc/N/stat)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        found: set[int] = set()
        todo = [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    @staticmethod
    def running(pid: int, command: str) -> list[int]:
        """The processes below `pid` whose command line names `command` (e.g. a module)."""
        found = []
        for child in ProcessTree.descendants(pid):
            try:
                line = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            if command.encode() in line:
                found.append(child)
        return found

    @staticmethod
    def alive(pid: int) -> bool:
        """Running, not a zombie waiting for its parent to read its status."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat[stat.rindex(")") + 2] != "Z"
