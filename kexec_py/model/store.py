"""The model's state directory: one model kernel shared by separate
invocations, as a real kernel is shared by separate commands.

Default location: ``$KEXEC_PY_MODEL_STATE``; else ``ROOT/run/kexec-py/
model`` when ``--root`` is not ``/``; else ``$XDG_RUNTIME_DIR/kexec-py/
model``; else ``/tmp/kexec-py-<uid>/model``.

Safety (root runs kexec-py; the state must not let anyone else redirect
what it writes -- a user's ``$XDG_RUNTIME_DIR`` that ``sudo -E`` or ``su``
without ``-`` hand to root, a directory planted under ``/tmp``).  Every
use of the directory walks to it from ``/`` one component at a time
without following symlinks (:func:`kexec_py.safefile.open_private_dir`)
and checks:

- the directories kexec-py creates (``kexec-py/`` and ``model/``,
  ``kexec-py-<uid>/`` and ``model/``) and an explicit ``--model-state``
  / ``$KEXEC_PY_MODEL_STATE`` directory: owned by the effective uid, mode
  without group/other write, not a symlink (an explicit one that is a
  symlink is refused: give its real path); created mode 0700;
- the directory they are in (``ROOT/run``, ``$XDG_RUNTIME_DIR``, the
  temporary directory, the parent of an explicit directory): owned by root
  or the effective uid, not writable by group or others unless sticky
  (``/tmp``);
- every directory above that: not writable by group or others unless
  sticky.

Files in it are opened relative to the checked directory with
``O_NOFOLLOW | O_CLOEXEC`` and must be regular files; the ones kexec-py
creates are mode 0600.  A symlink planted for one of them is refused with
an error naming it, except by ``model-reset``, which removes (unlinks,
never follows) whatever is at the names it replaces (``state``,
``memory``, ``dirty``, ``state.tmp``, and ``lock`` when that is not a
regular file).  The model's memory file is checked that way, then opened
by its real path (:class:`~kexec_py.model.physmem.PhysMem` takes a path):
only this user or root can change what that path leads to.

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

import contextlib
import errno
import fcntl
import json
import os
import struct
import sys
import tempfile
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kexec_py import __version__
from kexec_py.boundary.abi import Stage
from kexec_py.errors import KexecError
from kexec_py.model.config import ModelConfig
from kexec_py.model.kernel import Image, JumpRecord, Level, ModelKernel
from kexec_py.model.physmem import PhysMem
from kexec_py.model.tables import Owners, PageTable
from kexec_py.safefile import (
    UnsafePathError,
    create_private,
    open_in,
    open_private_dir,
    remove_leftover,
)

STATE_VERSION = 1
MAGIC = b"KPYMODEL"
_HEAD = struct.Struct("<8sIIQ")
RESET_HINT = ("run 'kexec-py --backend model model-reset' (it discards the model's images and "
              "memory)")


def default_state(root: Path) -> tuple[Path, int, str]:
    """The state directory of ``--root`` ``root`` when none is given:
    ``(path, owned, source)``: ``owned`` is how many of its last components
    kexec-py makes and owns, ``source`` where it comes from ("explicit"
    for ``$KEXEC_PY_MODEL_STATE``, "root", "xdg" or "tmp")."""
    env = os.environ.get("KEXEC_PY_MODEL_STATE")
    if env:
        return Path(env), 1, "explicit"
    if root != Path("/"):
        return root / "run/kexec-py/model", 2, "root"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "kexec-py/model", 2, "xdg"
    return Path(tempfile.gettempdir()) / f"kexec-py-{os.geteuid()}" / "model", 2, "tmp"


def default_state_path(root: Path) -> Path:
    """The state directory of ``--root`` ``root`` when none is given."""
    return default_state(root)[0]


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
    """The files of one model state (see the module docstring).

    ``path``: the directory; ``owned``: how many of its last components
    kexec-py makes and owns (1 for a directory given by the user);
    ``source``: where the path comes from (for hints).  Each method walks to
    the directory again, checked (:meth:`_dir`)."""

    def __init__(self, path: Path, owned: int = 1, source: str = "explicit") -> None:
        self.path = path
        self.owned = owned
        self.source = source
        self.state_file = path / "state"
        self.mem_file = path / "memory"
        self.lock_file = path / "lock"
        self.dirty_file = path / "dirty"
        self._lock_fd: int | None = None

    @classmethod
    def default(cls, root: Path) -> StateDir:
        return cls(*default_state(root))

    # --- the directory, checked --------------------------------------------------------

    def _split(self) -> tuple[Path, tuple[str, ...]]:
        """(the directory the owned ones are made in, the owned names)."""
        p = Path(os.path.abspath(self.path))
        parts = p.parts[1:]
        if len(parts) < self.owned:
            raise KexecError(f"{self.path} cannot be the model state directory",
                             "give --model-state a directory path (it is created if missing)")
        return p.parents[self.owned - 1], parts[len(parts) - self.owned:]

    def real_path(self) -> Path:
        """The directory with the symlinks above it resolved (what the
        checks are made on)."""
        base, owned = self._split()
        return Path(os.path.realpath(base)).joinpath(*owned)

    def _hint(self) -> str:
        hint = ("the model state must be a directory of this user's that nobody else can "
                "write, under directories nobody else can write (sticky ones such as /tmp "
                "excepted): fix or remove the directory named, or use --model-state DIR "
                "(KEXEC_PY_MODEL_STATE)")
        if self.source == "xdg":
            hint += (f"; XDG_RUNTIME_DIR={os.environ.get('XDG_RUNTIME_DIR', '')} may be "
                     "another user's ('sudo -E' and 'su' without '-' keep it): unset it")
        return hint

    @contextlib.contextmanager
    def _dir(self, create: bool) -> Iterator[int | None]:
        """A descriptor of the checked directory (None: it does not exist and
        ``create`` is False)."""
        base, owned = self._split()
        fd = open_private_dir(base, owned, create=create, what="model state directory",
                              shown=self.path, hint=self._hint())
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    def _planted(self, name: str) -> str:
        return ("kexec-py never makes one there: see who did, then remove it "
                f"(rm {self.path / name}), or run 'kexec-py --backend model model-reset', "
                "which removes it (and discards the model's images and memory)")

    def _open(self, d: int, name: str, flags: int) -> int:
        return open_in(d, name, flags, self.path / name, self._planted(name))

    def _read_file(self, name: str) -> bytes | None:
        """The bytes of ``name``, None when it (or the directory) is missing."""
        with self._dir(create=False) as d:
            if d is None:
                return None
            try:
                fd = self._open(d, name, os.O_RDONLY)
            except FileNotFoundError:
                return None
            with open(fd, "rb") as f:
                return f.read()

    def exists(self) -> bool:
        with self._dir(create=False) as d:
            if d is None:
                return False
            try:
                os.stat("state", dir_fd=d, follow_symlinks=False)
            except FileNotFoundError:
                return False
            return True

    def ensure(self) -> None:
        """Create the directory (and the ones kexec-py owns above it) if
        missing; check it either way."""
        with self._dir(create=True):
            pass

    def memory_path(self, create: bool) -> Path:
        """The path to open the model's memory file by: checked (a regular
        file, not a symlink; created mode 0600 with ``create``), then
        named by the directory's real path."""
        with self._dir(create=create) as d:
            try:
                if d is None:
                    raise FileNotFoundError
                fd = self._open(d, "memory", os.O_RDONLY | (os.O_CREAT if create else 0))
            except FileNotFoundError:
                raise KexecError(f"the model's memory file {self.mem_file} is missing",
                                 RESET_HINT) from None
            except OSError as e:
                raise KexecError(f"cannot open the model's memory {self.mem_file}: "
                                 f"{e.strerror}", "check --model-state") from None
            os.close(fd)
        return self.real_path() / "memory"

    # --- the lock ----------------------------------------------------------------------

    def try_lock(self, repair: bool = False) -> bool:
        """Take the model's kexec lock; False when another invocation has it.
        ``repair`` (model-reset): a lock that is not a regular file (a
        planted symlink) is removed -- never followed -- and made again."""
        if self._lock_fd is not None:
            return True
        with self._dir(create=True) as d:
            assert d is not None
            try:
                fd = self._open(d, "lock", os.O_RDWR | os.O_CREAT)
            except UnsafePathError:
                if not repair:
                    raise
                self._unlink(d, "lock")
                fd = self._open(d, "lock", os.O_RDWR | os.O_CREAT)
            except OSError as e:
                raise KexecError(f"cannot open {self.lock_file}: {e.strerror}",
                                 "check --model-state") from None
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
        with self._dir(create=True) as d:
            assert d is not None
            try:
                fd = self._open(d, "dirty", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            except OSError as e:
                raise KexecError(f"cannot write {self.dirty_file}: {e.strerror}",
                                 "check --model-state") from None
            with open(fd, "w") as f:
                f.write(" ".join(sorted(ops)) + "\n")

    def dirty(self) -> set[str] | None:
        try:
            data = self._read_file("dirty")
        except OSError as e:
            raise KexecError(f"cannot read {self.dirty_file}: {e.strerror}",
                             "check --model-state") from None
        return None if data is None else set(data.decode(errors="replace").split())

    def clear_dirty(self) -> None:
        with self._dir(create=False) as d:
            if d is not None:
                self._unlink(d, "dirty")

    def _unlink(self, d: int, name: str) -> None:
        """Remove ``name`` (a symlink is removed, never followed)."""
        try:
            os.unlink(name, dir_fd=d)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise KexecError(f"cannot remove {self.path / name}: {e.strerror}",
                             "remove it by hand, or use another --model-state") from None

    # --- the state file ------------------------------------------------------------------------

    def _corrupt(self, why: str) -> KexecError:
        return KexecError(f"model state {self.state_file} is unusable: {why}", RESET_HINT)

    def read(self) -> tuple[dict[str, Any], list[memoryview]] | None:
        try:
            data = self._read_file("state")
            if data is None:
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
        """Replace the state file: ``state.tmp`` (new, mode 0600), fsync,
        rename over ``state``, fsync of the directory."""
        hjson = json.dumps(header, separators=(",", ":")).encode()
        head = _HEAD.pack(MAGIC, STATE_VERSION, len(blobs), len(hjson)) + \
            struct.pack(f"<{len(blobs)}Q", *(len(b) for b in blobs))
        crc = zlib.crc32(head)
        crc = zlib.crc32(hjson, crc)
        with self._dir(create=True) as d:
            assert d is not None
            try:
                # we hold the lock: a state.tmp is what a dead invocation left
                remove_leftover("state.tmp", d, self.path / "state.tmp",
                                self._planted("state.tmp"))
                with open(create_private("state.tmp", d), "wb") as f:
                    f.write(head)
                    f.write(hjson)
                    for b in blobs:
                        f.write(b)
                        crc = zlib.crc32(b, crc)
                    f.write(struct.pack("<I", crc))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace("state.tmp", "state", src_dir_fd=d, dst_dir_fd=d)
                os.fsync(d)
            except OSError as e:
                raise KexecError(f"cannot write the model state {self.state_file}: "
                                 f"{e.strerror}",
                                 "check free space and permissions of --model-state") from None

    def remove(self) -> None:
        """Delete the model (state and memory); the lock file stays.  What
        is at those names is removed, never followed."""
        with self._dir(create=False) as d:
            if d is not None:
                for name in ("state", "memory", "dirty", "state.tmp"):
                    self._unlink(d, name)
