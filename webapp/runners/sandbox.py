"""Where a shell step runs: isolated from the server that runs it (DESIGN §3 "Step runners").

Levels (ANSFLOW_STEP_ISOLATION; unset = the strongest one this machine supports):

- ``bwrap``: bubblewrap. The step sees a read-only system (/usr, /etc and the /bin, /lib...
  links), a private /tmp, /dev and /proc, its own pid, IPC and UTS namespaces, and its
  workspace, the only writable place. Nothing else of the host's files (the checkout,
  ``instance/``, the database, other workspaces, home directories) exists in it, and no
  process outside it is visible. A root worker starts bwrap itself and the step drops to its
  execution's uid inside (setpriv, no capabilities, no_new_privs); any other worker runs bwrap
  unprivileged in a user namespace (its own uid, further user namespaces disabled).
- ``user``: the step runs as its execution's unprivileged uid (the worker must be root to
  switch). ``instance/`` and the database are the worker's alone (lock_down), workspaces are
  0700 and each execution has its own uid, so neither the server's files, other executions'
  workspaces nor the worker's /proc entries (its environment) can be read, and the step cannot
  signal the worker. The rest of the system is readable as for any local user.
- ``none``: the worker's own user. Only the environment is filtered (env.py). For trusted
  single-user setups; the worker warns at start.

Each execution gets a uid (and a gid of the same number) of ANSFLOW_STEP_UIDS, allocated when
its workspace is first used (a marker file created with O_EXCL under <workspace root>/.uids, so
workers on one machine never hand out one uid twice) and read back from the workspace's owner.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import lifetime

BWRAP, USER, NONE = "bwrap", "user", "none"
_HAS_SETPRIV = shutil.which("setpriv") is not None
LEVELS = (BWRAP, USER, NONE)
DEFAULT_UIDS = "2000000000-2099999999"
SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
IN_SANDBOX_TMP = "/tmp"


class SandboxError(RuntimeError):
    """The configured isolation cannot be had here (said at worker start)."""


@dataclass(frozen=True)
class Sandbox:
    level: str
    uids: range | None = None            # per-execution uids (root workers under bwrap and user)
    masked: tuple[str, ...] = ()         # host paths hidden inside bwrap even under a bound system dir
    notes: tuple[str, ...] = field(default=())

    @property
    def switches_user(self) -> bool:
        return self.uids is not None

    def describe(self) -> str:
        text = {
            BWRAP: "bwrap (bubblewrap: read-only system, only the workspace writable, own pid namespace"
                   + (", a uid per execution)" if self.switches_user else ", the worker's uid in a user namespace)"),
            USER: "user (a uid per execution; instance/ and the database readable by the worker only)",
            NONE: "none (steps run as the worker's user and can read its files: trusted single-user setups only)",
        }[self.level]
        return "; ".join((f"Step isolation: {text}",) + self.notes)

    def wrap(self, argv: list[str], workspace: Path, uid: int | None, bind_workspace: bool = True) -> list[str]:
        return _wrap(self, argv, workspace, uid, bind_workspace)


# -- choosing the level ------------------------------------------------------------------------

def parse_uids(text: str | None) -> range:
    raw = (text or DEFAULT_UIDS).strip()
    try:
        lo, hi = (int(x) for x in raw.split("-", 1))
    except ValueError:
        raise SandboxError(f"ANSFLOW_STEP_UIDS must be FIRST-LAST, got {raw!r}") from None
    if not (1000 <= lo <= hi < 2**32 - 2):
        raise SandboxError(f"ANSFLOW_STEP_UIDS must lie within 1000-4294967293, got {raw!r}")
    return range(lo, hi + 1)


_probe_lock = threading.Lock()
_probed: dict[bool, str | None] = {}


def bwrap_problem(as_root: bool | None = None) -> str | None:
    """Why bwrap cannot sandbox a step here (None when it can): it runs `true` in a sandbox
    as steps would get it, once per process."""
    as_root = os.geteuid() == 0 if as_root is None else as_root
    with _probe_lock:
        if as_root not in _probed:
            _probed[as_root] = _probe_bwrap(as_root)
        return _probed[as_root]


def _probe_bwrap(as_root: bool) -> str | None:
    binary = shutil.which("bwrap")
    if binary is None:
        return "bwrap is not installed (Debian: apt-get install bubblewrap)"
    if as_root and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing"
    probe = Sandbox(BWRAP, uids=range(65534, 65535) if as_root else None)
    argv = probe.wrap(["true"], Path("/"), 65534 if as_root else None, bind_workspace=False)
    try:
        out = subprocess.run(argv, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not run: {exc}"
    if out.returncode != 0:
        detail = out.stderr.decode("utf-8", "replace").strip().splitlines()
        return "bwrap does not work here (" + (detail[-1] if detail else f"exit {out.returncode}") + ")"
    return None


def user_problem(workspace_root: Path | None) -> str | None:
    """Why steps cannot run as their own uid here (None when they can)."""
    if os.geteuid() != 0:
        return "the worker is not root, so it cannot switch users"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing"
    if workspace_root is not None:
        blocked = _untraversable_ancestor(Path(workspace_root))
        if blocked is not None:
            return f"{blocked} is not searchable by other users (chmod o+x it, or move ANSFLOW_WORKSPACE)"
    return None


def _untraversable_ancestor(path: Path) -> Path | None:
    path = Path(os.path.abspath(path))
    for parent in reversed(path.parents):
        try:
            mode = os.stat(parent).st_mode
        except OSError:
            return None   # created later by the worker (0711)
        if not mode & stat.S_IXOTH:
            return parent
    return None


def choose(setting: str | None, *, workspace_root: Path | None = None, uids: str | None = None,
           masked: tuple[str, ...] = ()) -> Sandbox:
    """The Sandbox for a setting: a level name, or empty/"auto" for the strongest one available."""
    level = (setting or "auto").strip().lower()
    if level not in LEVELS + ("auto",):
        raise SandboxError(f"ANSFLOW_STEP_ISOLATION must be one of bwrap, user, none (or unset), got {setting!r}")
    root = os.geteuid() == 0
    uid_range = parse_uids(uids) if root else None
    notes: list[str] = []
    if level in (BWRAP, "auto"):
        problem = bwrap_problem(root)
        if problem is None:
            return Sandbox(BWRAP, uids=uid_range, masked=masked)
        if level == BWRAP:
            raise SandboxError(f"ANSFLOW_STEP_ISOLATION=bwrap, but {problem}")
        notes.append(f"not bwrap: {problem}")
    if level in (USER, "auto"):
        problem = user_problem(workspace_root)
        if problem is None:
            return Sandbox(USER, uids=uid_range, masked=masked, notes=tuple(notes))
        if level == USER:
            raise SandboxError(f"ANSFLOW_STEP_ISOLATION=user, but {problem}")
        notes.append(f"not user: {problem}")
    if level == "auto":
        notes.append("set ANSFLOW_STEP_ISOLATION=none to say this is intended")
    return Sandbox(NONE, masked=masked, notes=tuple(notes))


_current: Sandbox | None = None
_current_lock = threading.Lock()


def available(workspace_root: Path | None = None) -> list[str]:
    """The levels this machine supports, strongest first (none always)."""
    root = os.geteuid() == 0
    found = [BWRAP] if bwrap_problem(root) is None else []
    if user_problem(workspace_root) is None:
        found.append(USER)
    return found + [NONE]


def configure(sandbox: Sandbox | None) -> Sandbox | None:
    """Set the process's Sandbox (None: choose again on next use)."""
    global _current
    with _current_lock:
        _current = sandbox
    return sandbox


def current() -> Sandbox:
    """The worker's Sandbox (cli.py configures it at start); anything else that runs steps
    gets the strongest level available, chosen from the environment on first use."""
    global _current
    with _current_lock:
        if _current is None:
            _current = choose(os.environ.get("ANSFLOW_STEP_ISOLATION"), uids=os.environ.get("ANSFLOW_STEP_UIDS"))
        return _current


# -- the server's files ----------------------------------------------------------------------------

def lock_down(instance: Path, database_files: list[Path], workspace_root: Path) -> None:
    """Make the server's files the worker's alone: instance/ 0700 (0711 when the workspace root
    lies inside it, so steps can reach their workspaces; then each other entry is private),
    the database and its -wal/-shm 0600, the workspace root 0711 (no listing of executions)."""
    instance = Path(instance)
    workspace_root = Path(os.path.abspath(workspace_root))
    _mkdir_private(workspace_root, 0o711)
    if instance.is_dir():
        inside = instance.resolve() in workspace_root.resolve().parents
        os.chmod(instance, 0o711 if inside else 0o700)
        if inside:
            for entry in os.scandir(instance):
                if Path(entry.path).resolve() in (workspace_root.resolve(), *workspace_root.resolve().parents):
                    continue
                if not entry.is_symlink():
                    os.chmod(entry.path, 0o700 if entry.is_dir() else 0o600)
    for db_file in database_files:
        for path in (db_file, Path(f"{db_file}-wal"), Path(f"{db_file}-shm"), Path(f"{db_file}.writelock")):
            if path.exists() and not path.is_symlink():
                os.chmod(path, 0o600)


def _mkdir_private(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.stat(path).st_uid == os.geteuid():
        os.chmod(path, mode)


# -- a step's workspace ----------------------------------------------------------------------------

def workspace_owner(sandbox: Sandbox, workspace: Path, execution_id: str) -> int | None:
    """The uid the execution's steps run as (also its gid), allocating it on first use; None
    when steps run as the worker. The workspace becomes 0700 and theirs, its root 0711."""
    if not sandbox.switches_user:
        return None
    workspace = Path(workspace)
    root = workspace.parent
    st = os.lstat(workspace)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "the workspace is not a directory", str(workspace))
    if st.st_uid in sandbox.uids:
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(workspace, 0o700)
        return st.st_uid
    if os.stat(root).st_uid == os.geteuid():
        os.chmod(root, 0o711)
    uid = _allocate_uid(sandbox.uids, root, execution_id)
    _chown_tree(workspace, uid)
    os.chmod(workspace, 0o700)
    return uid


def _allocate_uid(uids: range, root: Path, execution_id: str) -> int:
    markers = root / ".uids"
    markers.mkdir(mode=0o700, exist_ok=True)
    start = int.from_bytes(hashlib.sha256(execution_id.encode()).digest()[:8], "big") % len(uids)
    for i in range(len(uids)):
        uid = uids[(start + i) % len(uids)]
        try:
            fd = os.open(markers / str(uid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(execution_id)
        return uid
    raise SandboxError("every uid of ANSFLOW_STEP_UIDS is taken")


def _chown_tree(top: Path, uid: int) -> None:
    """Hand a workspace (empty, or filled by an unsandboxed run before) to its uid; links are
    not followed."""
    os.lchown(top, uid, uid)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


# -- the command line -------------------------------------------------------------------------

def _wrap(self: Sandbox, argv: list[str], workspace: Path, uid: int | None, bind_workspace: bool = True) -> list[str]:
    """argv as the sandbox runs it."""
    if self.level == USER and uid is not None:
        # setpriv rather than Popen(user=...): Python forks (instead of vfork) to switch users
        # itself, and copying the worker's page tables costs more than exec'ing setpriv
        return _setpriv(uid) + list(argv)
    if self.level != BWRAP:
        # the shell dies with its worker (bwrap's --die-with-parent does this for the level above)
        return (["setpriv", *lifetime.PDEATHSIG] if _HAS_SETPRIV else []) + list(argv)
    args = ["bwrap", "--die-with-parent"]
    if uid is not None:
        # bwrap as root: no user namespace (it would map the step's uid back to root); the step
        # gets its uid from setpriv, inside, with every capability gone.
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    else:
        args += ["--unshare-all", "--share-net", "--unshare-user", "--disable-userns"]
    system, bound = _system_view(self.masked)
    args += system
    if bind_workspace:
        # The directories bwrap makes on the way to the workspace would copy the host's modes
        # (a 0700 one would stop the step's uid): searchable, not listable.
        for parent in reversed(Path(workspace).parents):
            p = str(parent)
            if p not in ("/", IN_SANDBOX_TMP) and not any(p == b or p.startswith(b + "/") for b in bound):
                args += ["--perms", "0711", "--dir", p]
        args += ["--bind", str(workspace), str(workspace), "--chdir", str(workspace)]
    if uid is not None:
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--"] + _setpriv(uid)
    else:
        args.append("--")
    return args + list(argv)


@functools.lru_cache(maxsize=8)
def _system_view(masked: tuple[str, ...]) -> tuple[list[str], tuple[str, ...]]:
    """bwrap's arguments for the read-only system and the private /dev, /proc and /tmp, and the
    host directories bound (the host's layout is read once per process, not per step)."""
    bound = ["/usr", "/etc"]
    args = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for name in SYSTEM_LINKS:
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
            bound.append(str(host))
    if Path("/opt").is_dir():
        args += ["--ro-bind", "/opt", "/opt"]
        bound.append("/opt")
    resolv = Path("/etc/resolv.conf")
    if resolv.is_symlink():   # systemd-resolved: the file lives under /run
        args += ["--ro-bind-try", os.path.realpath(resolv), os.path.realpath(resolv)]
    args += ["--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", IN_SANDBOX_TMP]
    for path in masked:   # server paths under a bound system dir (e.g. /etc/ansflow)
        if not any(path.startswith(b + "/") for b in bound):
            continue          # elsewhere they do not exist in the sandbox at all
        if os.path.isdir(path):
            args += ["--tmpfs", path]
        elif os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    return args, tuple(bound)


def _setpriv(uid: int) -> list[str]:
    """Become `uid` (and gid `uid`, no other groups) with no capabilities and no way back up
    (no_new_privs: setuid binaries do not raise it)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", *lifetime.PDEATHSIG]


def step_env_overrides(sandbox: Sandbox, workspace: Path) -> dict[str, str]:
    """HOME and TMPDIR where a sandboxed step can write them (the worker's are not its)."""
    if sandbox.level == NONE:
        return {}
    env = {"HOME": str(workspace), "USER": "ansflow-step", "LOGNAME": "ansflow-step"}
    if sandbox.level == BWRAP:
        env["TMPDIR"] = IN_SANDBOX_TMP
    return env
