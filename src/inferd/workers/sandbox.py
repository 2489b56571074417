"""The worker's side of isolation: applied by the worker process to itself at start-up, before it
reads its first frame, so no model code ever runs before it (see `isolation` for the server's).

In this order, each step only where the plan asks for it:

1. Network: a network namespace of its own with nothing but a loopback interface, like
   `docker --network none`: no route leaves the process, and its 127.0.0.1 is not the host's.
   As root this is one `unshare`; otherwise a user namespace comes with it (then every
   capability is given up again once the interface is up).
2. Files (root only, before the drop): a private mount namespace in which the worker sees its
   model folder read-only, at its real path, even when a folder above it is closed to the worker
   user (a 0700 data dir, /root); the folders that hide it are covered by empty tmpfs skeletons
   that hold only what the worker needs (the model folder, the Python installation, its scratch
   dir), so the rest of them (the registry database, other models) is not there at all.
   /tmp, /var/tmp and /run/lock become read-only skeletons, /dev/shm a private tmpfs. The model
   folder is an idmapped mount that shows the server's files as the worker user's: the worker
   reads what the server could, zero-copy, and writes nothing (read-only).
3. The drop to the unprivileged user (no supplementary groups), proved by failing to regain
   root; no-new-privileges (setuid programs cannot raise it again) and not dumpable (workers of
   other models, which share the user, cannot ptrace it or read its memory, fds or mount view
   through /proc).

Linux only; every failure says what the kernel refused. Uses libc through ctypes: Python 3.11
has no `os.unshare` nor the new mount API.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import stat
import struct
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 0x4000, 0x40000
# the new mount API: the same numbers on every Linux architecture
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = -100, 0x1000, 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
MOUNT_ATTR_IDMAP = 0x100000
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
SIOCSIFFLAGS = 0x8914
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40
_CAPS_V3 = 0x20080522

#: World-writable places every Linux has: in the worker's view they hold only what it needs,
#: and it cannot write there (its scratch dir is where it writes).
SHARED_WRITABLE = ("/tmp", "/var/tmp", "/run/lock")
#: Given a private, writable tmpfs: POSIX semaphores and shared memory (multiprocessing, torch)
#: need it, and other workers' files in the host's /dev/shm stay out of reach.
PRIVATE_SHM = "/dev/shm"


class SandboxError(Exception):
    """The worker must not load a model: isolation that is required could not be set up."""


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]  # fmt: skip


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _unshare(flags: int, what: str) -> None:
    _check(_libc().unshare(flags), what)


def enter(plan: dict[str, Any]) -> list[str]:
    """Apply `plan` (from `WorkerIsolation.prepare`) to this process. Returns notes for the
    server's log (isolation the kernel refused and that is not required); raises SandboxError
    when the model must not load."""
    notes: list[str] = []
    if not sys.platform.startswith("linux"):
        if plan.get("require_network_isolation") and not plan.get("network", True):
            raise SandboxError("workers can be cut off the network on Linux only")
        return ["worker isolation needs Linux: workers run with the server's user and network"]
    as_root = os.geteuid() == 0
    uid, gid = plan.get("uid"), plan.get("gid")
    drop = as_root and uid is not None and gid is not None
    if (drop or not plan.get("network", True)) and threads() > 1:
        # namespaces are per thread: one started before would stay outside them
        raise SandboxError("worker isolation was set up after a thread started; nothing loads")
    if not plan.get("network", True):
        try:
            private_network(as_root)
        except OSError as e:
            why = f"the kernel refused a network namespace for workers ({e.strerror})"
            if plan.get("require_network_isolation"):
                raise SandboxError(
                    f"{why}, and workers.require_network_isolation is set: a model that must "
                    "run without network is not loaded"
                ) from None
            notes.append(f"{why}: models that should run without network keep it")
    if drop:
        assert uid is not None and gid is not None
        mounts_failed = ""
        try:
            private_mounts(plan, uid, gid)
        except OSError as e:
            mounts_failed = f"the kernel refused a mount namespace for workers ({e.strerror})"
            notes.append(f"{mounts_failed}: they see the server's files as their user does")
        # what must stay readable, listed while root can still see it (a missing model folder
        # is the runtime's to report)
        wanted = [("its model folder", plan.get("model_dir")),
                  ("the Python standard library", os.path.dirname(os.__file__))]  # fmt: skip
        wanted = [(what, path) for what, path in wanted if path and os.path.exists(path)]
        drop_to(uid, gid)
        check_readable(wanted, str(plan.get("user", "")), mounts_failed)
    try:
        harden(dumpable=not drop)
    except OSError as e:
        raise SandboxError(f"could not harden the worker: {e.strerror}") from None
    with contextlib.suppress(KeyError, OSError):
        os.chdir(plan["scratch"])
    return notes


def threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


# ---- network ---------------------------------------------------------------------------------


def private_network(as_root: bool) -> None:
    """A network namespace of this process's own, its loopback up (libraries that talk to
    themselves over 127.0.0.1 keep working; nothing else is reachable)."""
    if as_root:
        _unshare(CLONE_NEWNET, "unshare(CLONE_NEWNET)")
        loopback_up()
        return
    uid, gid = os.geteuid(), os.getegid()
    _unshare(CLONE_NEWUSER | CLONE_NEWNET, "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
    # the same ids inside: files, sockets and messages see the same user
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    loopback_up()
    drop_capabilities()  # held in the new user namespace only, and not needed any more


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        # struct ifreq: a 16-byte name, then a union of which the flags are the first short
        ifreq = struct.pack("16sH22x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING)
        fcntl.ioctl(s, SIOCSIFFLAGS, ifreq)


def drop_capabilities() -> None:
    header = struct.pack("Ii", _CAPS_V3, 0)
    data = bytes(24)  # two {effective, permitted, inheritable} sets, all empty
    _check(_libc().capset(header, data), "capset")


# ---- files -----------------------------------------------------------------------------------


def python_paths() -> list[str]:
    """What this interpreter reads to import anything later: its prefixes and search path."""
    import inferd

    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             str(Path(inferd.__file__).parent.parent), *sys.path]  # fmt: skip
    return [p for p in paths if p and os.path.exists(p)]


def private_mounts(plan: dict[str, Any], uid: int, gid: int) -> None:
    """The worker's own view of the file system (module docstring, step 2)."""
    scratch, shm = plan.get("scratch"), plan.get("shm")
    rw = [p for p in (scratch, shm) if p]
    model = plan.get("model_dir")
    _unshare(CLONE_NEWNS, "unshare(CLONE_NEWNS)")
    libc = _libc()
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    exposures: list[tuple[str, int]] = []  # (path, mount attributes)
    read_only = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
    for path in outermost(os.path.realpath(p) for p in python_paths()):
        if not any(_within(path, os.path.realpath(w)) for w in rw):
            exposures.append((path, read_only))
    exposures += [(os.path.realpath(p), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV) for p in rw]
    if model and os.path.isdir(model):  # a missing one is the runtime's to report
        exposures.append((os.path.realpath(model), read_only | MOUNT_ATTR_IDMAP))
    # clone every tree to show before the covers hide the originals
    clones: list[tuple[str, int]] = []
    try:
        for path, attrs in exposures:
            clones.append((path, _clone(path, attrs, uid, gid)))
    except BaseException:
        for _, fd in clones:
            os.close(fd)
        raise
    closed = [closed_ancestor(path, uid, gid) for path, _ in exposures]
    hidden = [*SHARED_WRITABLE, *plan.get("hide", ())]
    covers = outermost(
        [os.path.realpath(p) for p in hidden if os.path.isdir(p)]
        + [a for a in closed if a is not None]
    )
    covers = [c for c in covers if c != "/"]
    for cover in covers:
        _check(libc.mount(b"tmpfs", cover.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                          b"mode=0755,size=1m"), f"mount tmpfs on {cover}")  # fmt: skip
    if os.path.isdir(PRIVATE_SHM) and not any(_within(PRIVATE_SHM, c) for c in covers):
        _check(libc.mount(b"tmpfs", PRIVATE_SHM.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                          b"mode=1777"), "mount tmpfs on /dev/shm")  # fmt: skip
    for path, fd in sorted(clones, key=lambda c: c[0].count("/")):
        try:
            if not os.path.exists(path):
                os.makedirs(path, mode=0o755)
            _check(libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, path.encode(),
                                MOVE_MOUNT_F_EMPTY_PATH), f"move_mount {path}")  # fmt: skip
        finally:
            os.close(fd)


def _clone(path: str, attrs: int, uid: int, gid: int) -> int:
    """A detached copy of the mount tree at `path`, with `attrs`; an idmap shows the server's
    (root's) files as the worker user's. Where the file system cannot be idmapped, the copy is
    made without it (the worker then reads what its user may)."""
    libc = _libc()
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
    fd = _check(libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), flags), f"open_tree {path}")
    try:
        if attrs & MOUNT_ATTR_IDMAP:
            userns = _mapped_userns(uid, gid)
            try:
                _set_attrs(fd, attrs, userns)
                return fd
            except OSError:
                attrs &= ~MOUNT_ATTR_IDMAP
            finally:
                os.close(userns)
        _set_attrs(fd, attrs, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _set_attrs(fd: int, attrs: int, userns: int) -> None:
    attr = _MountAttr(attrs, 0, 0, userns)
    _check(_libc().syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                           ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr")  # fmt: skip


def _mapped_userns(uid: int, gid: int) -> int:
    """An fd of a user namespace that maps root (the server) to `uid`/`gid`, for an idmapped
    mount. A child process creates it (this process must stay in its own namespace) and exits."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only holds the namespace open
        try:
            os.close(ready_r)
            os.close(go_w)
            ok = _libc().unshare(CLONE_NEWUSER) == 0
            os.write(ready_w, b"1" if ok else b"0")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(1, "unshare(CLONE_NEWUSER) for an idmapped mount was refused")
        Path(f"/proc/{pid}/uid_map").write_text(f"0 {uid} 1")
        Path(f"/proc/{pid}/setgroups").write_text("deny")
        Path(f"/proc/{pid}/gid_map").write_text(f"0 {gid} 1")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(go_w)
        os.waitpid(pid, 0)


def closed_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The highest folder above `path` that `uid` (in group `gid`, no others) cannot enter."""
    parts = Path(path).parts
    for i in range(1, len(parts)):
        folder = str(Path(*parts[:i]))
        try:
            st = os.stat(folder)
        except OSError:
            return None
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return folder
    return None


def outermost(paths: Any) -> list[str]:
    """`paths` without duplicates and without those inside another one."""
    out: list[str] = []
    for p in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        if not any(_within(p, q) for q in out):
            out.append(p)
    return out


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# ---- the user --------------------------------------------------------------------------------


def drop_to(uid: int, gid: int) -> None:
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise SandboxError(f"could not switch the worker to uid {uid}: {e.strerror}") from None
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SandboxError("the worker could become root again after dropping its privileges")


def check_readable(wanted: list[tuple[str, Any]], user: str, mounts_failed: str) -> None:
    """After the drop: a worker that cannot read its model or its own Python fails its load
    with the way out, not with an ImportError from deep inside a framework."""
    for what, path in wanted:
        if not os.access(path, os.R_OK | os.X_OK):
            why = f" ({mounts_failed})" if mounts_failed else ""
            raise SandboxError(
                f"the worker runs as user '{user}' (the server runs as root) and cannot read "
                f"{what}, {path}{why}: make it and the folders above it readable by that user, "
                "or set workers.user to '' to keep workers as root"
            )


def harden(dumpable: bool) -> None:
    libc = _libc()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if not dumpable:
        _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
