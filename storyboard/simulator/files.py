"""The simulator's input, output and temp folders, laid out like ComfyUI's."""

from __future__ import annotations

import hashlib
import posixpath
import re
import secrets
from pathlib import Path


class UnsafePathError(ValueError):
    """A name or subfolder that would leave its folder."""


class FileStore:
    def __init__(self, root: Path, *, output_dir: Path | None, input_dir: Path | None) -> None:
        self.dirs = {
            "output": (output_dir or root / "output").resolve(),
            "input": (input_dir or root / "input").resolve(),
            "temp": (root / "temp").resolve(),
        }
        for folder in self.dirs.values():
            folder.mkdir(parents=True, exist_ok=True)
        self._temp_tag = secrets.token_hex(3)

    def locate(self, folder_type: str, subfolder: str, filename: str) -> Path:
        """The path of a stored file; UnsafePathError for names that escape the folder."""
        if folder_type not in self.dirs:
            raise UnsafePathError(f"unknown folder type {folder_type!r}")
        if not filename or filename.startswith("/") or ".." in filename:
            raise UnsafePathError(f"unsafe file name {filename!r}")
        base = self.dirs[folder_type]
        folder = (base / subfolder).resolve()
        path = (folder / filename).resolve()
        if not folder.is_relative_to(base) or not path.is_relative_to(base):
            raise UnsafePathError(f"unsafe subfolder {subfolder!r}")
        return path

    def input_files(self) -> list[str]:
        """Every uploaded file as LoadImage names it: 'subfolder/name.png'."""
        base = self.dirs["input"]
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())

    def read_input(self, name: str) -> bytes | None:
        subfolder, filename = posixpath.split(name)
        try:
            return self.locate("input", subfolder, filename).read_bytes()
        except (UnsafePathError, OSError):
            return None

    def input_digest(self, name: str) -> str:
        data = self.read_input(name)
        return hashlib.sha256(data).hexdigest() if data is not None else ""

    def upload(self, data: bytes, filename: str, subfolder: str, *, overwrite: bool) -> str:
        """Store an upload the way ComfyUI does; returns the name it was stored under.

        Same bytes under an existing name: nothing is written. Other bytes:
        `name (1).png`, unless `overwrite`.
        """
        name = posixpath.basename(filename.replace("\\", "/"))
        path = self.locate("input", subfolder, name)
        stem, suffix = posixpath.splitext(name)
        counter = 0
        while path.exists() and not overwrite:
            if path.read_bytes() == data:
                return path.name
            counter += 1
            path = path.with_name(f"{stem} ({counter}){suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path.name

    def save_image(
        self, data: bytes, prefix: str, *, temp: bool, suffix: str = ".png"
    ) -> dict[str, str]:
        """Write a result as `{prefix}_{counter:05}_{suffix}`; returns the `images` entry."""
        folder_type = "temp" if temp else "output"
        if temp:
            prefix = f"ComfyUI_temp_{self._temp_tag}"
        subfolder, stem = posixpath.split(prefix.replace("\\", "/"))
        folder = self.locate(folder_type, subfolder, stem or "ComfyUI").parent
        folder.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(re.escape(stem) + r"_(\d{5,})_\.\w+")
        used = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
        filename = f"{stem}_{max(used, default=0) + 1:05}_{suffix}"
        (folder / filename).write_bytes(data)
        return {"filename": filename, "subfolder": subfolder, "type": folder_type}
