"""The model's state directory: one model kernel shared by separate
invocations, as a real kernel is shared by separate commands.

Default location: ``$KEXEC_PY_MODEL_STATE``; else ``ROOT/run/kexec-py/
model`` when ``--root`` is not ``/``; else ``$XDG_RUNTIME_DIR/kexec-py/
model``; else ``/tmp/kexec-py-<uid>/model`` (a directory of the user's,
mode 0700, checked before use).

Files in it:

``memory``
    physical memory, a sparse file: offset = physical address;
``state``
    everything else, replaced atomically (write, fsync, rename) when an
    invocation that changed the model ends.  Layout, little-endian::

        0   8  magic "KPYMODEL"
        8   4  format version (u32)
        12  4  number of blobs N (u32)
        16  8  length of the JSON header (u64)
        24  8N length of each blob (u64)
        ..     the JSON header: configuration, allocator state, kernels,
               images (arrays replaced by [blob index, typecode])
        ..     the blobs: raw arrays of u64/s64 (page maps, page owners,
               segment lists, relocation lists)
        -4  4  CRC-32 of everything before it
``lock``
    ``flock``-ed by the invocation that changes the model; a second one
    gets EBUSY, as from a kernel whose kexec lock is taken;
``dirty``
    exists while an invocation that changed the model runs; when a later
    invocation finds it (and gets the lock) the earlier one died: the
    model drops a staged load in progress, and if an exec was under way,
    every image (memory contents are then undefined).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import struct
import sys
import tempfile
import zlib
from array import array
from pathlib import Path
from typing import Any

from kexec_py import __version__
from kexec_py.abi import Stage
from kexec_py.errors import KexecError
from kexec_py.model.config import ModelConfig
from kexec_py.model.kernel import Image, JumpRecord, Level, ModelKernel
from kexec_py.model.physmem import PhysMem
from kexec_py.model.tables import Owners, PageTable

STATE_VERSION = 1
MAGIC = b"KPYMODEL"
_HEAD = struct.Struct("<8sIIQ")
RESET_HINT = ("run 'kexec-py --backend model model-reset' (it discards the model's images and "
              "memory)")


def default_state_path(root: Path) -> Path:
    env = os.environ.get("KEXEC_PY_MODEL_STATE")
    if env:
        return Path(env)
    if root != Path("/"):
        return root / "run/kexec-py/model"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "kexec-py/model"
    return Path(tempfile.gettempdir()) / f"kexec-py-{os.geteuid()}" / "model"


def _check_private_dir(d: Path) -> None:
    """``d`` (under a world-writable /tmp) must be the user's own real
    directory, not a symlink or someone else's."""
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        os.mkdir(d, 0o700)
        return
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise KexecError(f"{d} is not a private directory of this user",
                         "remove it, or set --model-state / KEXEC_PY_MODEL_STATE elsewhere")


# --- packing arrays into blobs ----------------------------------------------------------


class Packer:
    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def arr(self, a: array[int]) -> list[Any]:
        self.blobs.append(a.tobytes())
        return [len(self.blobs) - 1, a.typecode]

    def pair(self, keys: array[int], values: array[int]) -> list[Any]:
        """A dict as two arrays of the same length (keys, values)."""
        return [self.arr(keys), self.arr(values)]


class Unpacker:
    def __init__(self, blobs: list[memoryview]) -> None:
        self.blobs = blobs

    def arr(self, ref: list[Any]) -> array[int]:
        i, tc = ref
        if tc not in ("Q", "q"):
            raise ValueError(f"bad typecode {tc!r}")
        a = array(tc)
        a.frombytes(self.blobs[int(i)])
        if sys.byteorder != "little":
            a.byteswap()
        return a

    def pair(self, ref: list[Any]) -> tuple[array[int], array[int]]:
        keys, values = self.arr(ref[0]), self.arr(ref[1])
        if len(keys) != len(values):
            raise ValueError("dict blobs of different lengths")
        return keys, values


# --- the kernel <-> JSON + blobs ------------------------------------------------------------

_IMG_ARRAYS = ("seg_mem", "seg_memsz", "seg_bufsz", "seg_call", "pages", "unusable",
               "control", "ind", "reloc_dst", "reloc_src")
_JUMP_ARRAYS = ("seg_mem", "seg_memsz", "seg_bufsz")


def _img_out(img: Image | None, p: Packer) -> dict[str, Any] | None:
    if img is None:
        return None
    d: dict[str, Any] = {
        "id": img.id, "kind": img.kind, "crash": img.crash, "entry": img.entry,
        "preserve_context": img.preserve_context, "stage": int(img.stage), "calls": img.calls,
        "map": p.pair(*img.map.arrays()), "file": img.file,
    }
    for name in _IMG_ARRAYS:
        d[name] = p.arr(getattr(img, name))
    return d


def _img_in(d: dict[str, Any] | None, u: Unpacker, npfn: int) -> Image | None:
    if d is None:
        return None
    img = Image(int(d["id"]), str(d["kind"]), bool(d["crash"]), int(d["entry"]),
                bool(d["preserve_context"]), Stage(int(d["stage"])), int(d["calls"]))
    for name in _IMG_ARRAYS:
        setattr(img, name, u.arr(d[name]))
    img.map = PageTable.from_arrays(npfn, *u.pair(d["map"]))
    img.file = d["file"]
    return img


def _jump_out(r: JumpRecord | None, p: Packer) -> dict[str, Any] | None:
    if r is None:
        return None
    d: dict[str, Any] = {
        "what": r.what, "entry": r.entry, "preserve_context": r.preserve_context,
        "kind": r.kind, "from": r.from_kernel, "to": r.to_kernel, "cmdline": r.cmdline,
        "boot_params": r.boot_params, "jump_back_entry": r.jump_back_entry,
        "pages": r.pages, "lost_bytes": r.lost_bytes,
    }
    for name in _JUMP_ARRAYS:
        d[name] = p.arr(getattr(r, name))
    return d


def _jump_in(d: dict[str, Any] | None, u: Unpacker) -> JumpRecord | None:
    if d is None:
        return None
    r = JumpRecord(str(d["what"]), int(d["entry"]), bool(d["preserve_context"]),
                   str(d["kind"]), str(d["from"]), str(d["to"]),
                   cmdline=d["cmdline"], boot_params=d["boot_params"],
                   jump_back_entry=d["jump_back_entry"], pages=int(d["pages"]),
                   lost_bytes=int(d["lost_bytes"]))
    for name in _JUMP_ARRAYS:
        setattr(r, name, u.arr(d[name]))
    return r


def dump_kernel(k: ModelKernel) -> tuple[dict[str, Any], list[bytes]]:
    p = Packer()
    levels = []
    for lvl in k.levels:
        levels.append({
            "name": lvl.name, "owner": p.pair(*lvl.owner.arrays()), "nfree": lvl.nfree,
            "cmdline": lvl.cmdline, "kexec": _img_out(lvl.kexec, p),
            "staging": _img_out(lvl.staging, p), "crash": _img_out(lvl.crash, p),
            "entered": _jump_out(lvl.entered, p),
        })
    version, internal, gauss = k.rng.getstate()
    header = {
        "version": STATE_VERSION, "written_by": f"kexec-py {__version__}",
        "flavour": k.flavour, "config": k.config.to_json(),
        "rng": [version, list(internal), gauss], "order_x": k.order.x, "next_id": k.next_id,
        "levels": levels, "last_jump": _jump_out(k.last_jump, p), "notes": k.notes,
    }
    return header, p.blobs


def load_kernel(header: dict[str, Any], blobs: list[memoryview], mem: PhysMem,
                copy_contents: bool) -> ModelKernel:
    u = Unpacker(blobs)
    config = ModelConfig.from_json(header["config"])
    k = ModelKernel(config, str(header["flavour"]), mem, copy_contents=copy_contents)
    v, internal, gauss = header["rng"]
    k.rng.setstate((int(v), tuple(int(x) for x in internal), gauss))
    k.order.x = int(header["order_x"]) & k.order.mask
    k.next_id = int(header["next_id"])
    k.levels = []
    for d in header["levels"]:
        n = k.npfn
        k.levels.append(Level(str(d["name"]), Owners.from_arrays(n, *u.pair(d["owner"])),
                              int(d["nfree"]), str(d["cmdline"]), _img_in(d["kexec"], u, n),
                              _img_in(d["staging"], u, n), _img_in(d["crash"], u, n),
                              _jump_in(d["entered"], u)))
    if not k.levels:
        raise ValueError("no kernel level")
    k.last_jump = _jump_in(header["last_jump"], u)
    k.notes = [str(n) for n in header["notes"]]
    return k


# --- the directory ------------------------------------------------------------------------


class StateDir:
    """The files of one model state (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state_file = path / "state"
        self.mem_file = path / "memory"
        self.lock_file = path / "lock"
        self.dirty_file = path / "dirty"
        self._lock_fd: int | None = None

    def exists(self) -> bool:
        return self.state_file.exists()

    def ensure(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise KexecError(f"model state {p} is not a directory",
                             "give --model-state a directory path (it is created if missing)")
        tmp = Path(tempfile.gettempdir())
        if p.parent.parent == tmp and p.parent.name.startswith("kexec-py-"):
            _check_private_dir(p.parent)
        try:
            p.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise KexecError(f"cannot create the model state directory {p}: {e.strerror}",
                             "set --model-state (KEXEC_PY_MODEL_STATE) to a writable place"
                             ) from None

    # --- the lock ----------------------------------------------------------------------

    def try_lock(self) -> bool:
        """Take the model's kexec lock; False when another invocation has it."""
        if self._lock_fd is not None:
            return True
        self.ensure()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise KexecError(f"cannot lock {self.lock_file}: {e.strerror}") from None
        self._lock_fd = fd
        return True

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- dirty marker -----------------------------------------------------------------------

    def mark_dirty(self, ops: set[str]) -> None:
        self.dirty_file.write_text(" ".join(sorted(ops)) + "\n")

    def dirty(self) -> set[str] | None:
        try:
            return set(self.dirty_file.read_text().split())
        except FileNotFoundError:
            return None

    def clear_dirty(self) -> None:
        try:
            self.dirty_file.unlink()
        except FileNotFoundError:
            pass

    # --- the state file ------------------------------------------------------------------------

    def _corrupt(self, why: str) -> KexecError:
        return KexecError(f"model state {self.state_file} is unusable: {why}", RESET_HINT)

    def read(self) -> tuple[dict[str, Any], list[memoryview]] | None:
        try:
            data = self.state_file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise KexecError(f"cannot read {self.state_file}: {e.strerror}",
                             "check --model-state") from None
        if len(data) < _HEAD.size + 4 or not data.startswith(MAGIC):
            raise self._corrupt("not a kexec-py model state (bad magic)")
        magic, version, nblobs, hlen = _HEAD.unpack_from(data)
        if version != STATE_VERSION:
            raise KexecError(f"model state {self.state_file} has format version {version}; "
                             f"this kexec-py reads version {STATE_VERSION}", RESET_HINT)
        body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
        if zlib.crc32(body) != crc:
            raise self._corrupt("checksum mismatch (a damaged or truncated file)")
        off = _HEAD.size
        lens = struct.unpack_from(f"<{nblobs}Q", data, off)
        off += 8 * nblobs
        try:
            header = json.loads(data[off:off + hlen])
        except ValueError as e:
            raise self._corrupt(f"bad JSON header ({e})") from None
        off += hlen
        mv = memoryview(data)
        blobs = []
        for n in lens:
            blobs.append(mv[off:off + n])
            off += n
        if off != len(data) - 4:
            raise self._corrupt("blob lengths do not add up")
        return header, blobs

    def write(self, header: dict[str, Any], blobs: list[bytes]) -> None:
        hjson = json.dumps(header, separators=(",", ":")).encode()
        head = _HEAD.pack(MAGIC, STATE_VERSION, len(blobs), len(hjson)) + \
            struct.pack(f"<{len(blobs)}Q", *(len(b) for b in blobs))
        tmp = self.state_file.with_name("state.tmp")
        crc = zlib.crc32(head)
        crc = zlib.crc32(hjson, crc)
        try:
            with open(tmp, "wb") as f:
                f.write(head)
                f.write(hjson)
                for b in blobs:
                    f.write(b)
                    crc = zlib.crc32(b, crc)
                f.write(struct.pack("<I", crc))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)
        except OSError as e:
            raise KexecError(f"cannot write the model state {self.state_file}: {e.strerror}",
                             "check free space and permissions of --model-state") from None

    def remove(self) -> None:
        """Delete the model (state and memory); the lock file stays."""
        for f in (self.state_file, self.mem_file, self.dirty_file,
                  self.state_file.with_name("state.tmp")):
            try:
                f.unlink()
            except FileNotFoundError:
                pass
