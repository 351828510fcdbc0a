"""Run the ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel, on loopback ports.

The wheel bundles a real Triton Inference Server (``pytriton/tritonserver/bin/tritonserver``) with
the Python backend only, plus one Python-backend stub per Python version. PyTriton's own Python
layer is not used. :class:`TritonServer` prepares what the binary needs and always cleans up::

    with TritonServer("triton-repo") as server:      # free ports, waits until ready (bounded)
        client = tritonclient.http.InferenceServerClient(server.http_url)
        ...
    # stopped: SIGTERM to the process group, SIGKILL after a grace period, shm regions removed

What it prepares:

* a backend folder holding the wheel's Python backend and the stub for the *running* Python;
* ``LD_LIBRARY_PATH``: the running interpreter's ``LIBDIR`` first (the stub links
  ``libpython3.X.so``; a system libpython older than this interpreter breaks its stdlib
  extensions, e.g. ``_ssl``), then the wheel's own libraries;
* ``PYTHONPATH``: this package's parent and this environment's site-packages, so Python-backend
  models import sparse_deploy, torch, onnxruntime and diffusers from here.

``python -m sparse_deploy.triton.server --model-repository DIR`` serves a repository until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cliargs import MODULE_PROG, add_alias, finish_parser
from ..errors import SparseDeployError, cli_entry
from ..guards import check_output_file
from ..provenance import pid_alive

__all__ = [
    "PYTRITON_INSTALL",
    "TritonDistribution",
    "find_tritonserver",
    "free_port",
    "server_environment",
    "TritonServer",
    "main",
]

log = logging.getLogger(__name__)

# --no-deps: the wheel's metadata pins numpy<2, but only its binary is used here, which needs no
# Python package at all.
PYTRITON_INSTALL = "pip install --no-deps nvidia-pytriton==0.7.0"
_PORT_IN_USE = ("address already in use", "failed to start", "bind")


_WORK_PREFIX = "sparse-deploy-triton-"  # + <pid>-<random>: the work folder names the process that made it
_SHM_PREFIX = "sdtriton"  # + <pid><6 hex>_: the Python backend's shared-memory regions


def _processes_running_from(folder: Path) -> list[int]:
    """Processes whose executable lies in ``folder`` (Linux /proc): a killed server's backend stubs outlive it."""
    found = []
    root = str(folder.resolve())
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            exe = os.readlink(entry / "exe")
            if exe == root or exe.startswith(root + os.sep):
                found.append(int(entry.name))
    return found


def remove_stale_server_files() -> list[Path]:
    """Remove the work folders and shared-memory regions of servers whose wrapper process is gone (killed).

    Each is named after the process that made it, so only those of dead processes are touched; the
    backend stubs still running from such a folder (orphaned when their server died) are stopped first.
    """
    removed = []
    for work in Path(tempfile.gettempdir()).glob(f"{_WORK_PREFIX}*-*"):
        pid = work.name[len(_WORK_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and work.is_dir() and not work.is_symlink() and not pid_alive(int(pid)):
            for orphan in _processes_running_from(work):
                with contextlib.suppress(OSError):
                    os.kill(orphan, signal.SIGKILL)
            shutil.rmtree(work, ignore_errors=True)
            removed.append(work)
    shm = Path("/dev/shm")
    for region in shm.glob(f"{_SHM_PREFIX}*_*") if shm.is_dir() else ():
        tag = region.name[len(_SHM_PREFIX) :].split("_", 1)[0]
        pid = tag[:-6]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                region.unlink()
                removed.append(region)
    if removed:
        log.info("removed %d work folders and shared-memory regions of killed Triton servers", len(removed))
    return removed


@dataclass(frozen=True)
class TritonDistribution:
    """The parts of the nvidia-pytriton wheel the server needs."""

    binary: Path
    python_backend: Path  # folder with libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for the running Python
    libs: Path  # the wheel's bundled shared libraries
    caches: Path | None


def repository_models(repository: Path) -> list[str]:
    """The model folders (those holding a ``config.pbtxt``) of a Triton model repository."""
    return sorted(p.name for p in Path(repository).iterdir() if (p / "config.pbtxt").is_file())


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (a bind with SO_REUSEADDR fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def find_tritonserver(python_version: str | None = None) -> TritonDistribution:
    """Locate the binary, Python backend and stub in the installed ``nvidia-pytriton`` wheel.

    Raises:
        SparseDeployError: one sentence with the install line when the wheel is missing, or
            naming the Python versions it has stubs for.
    """
    # find_spec does not import pytriton (whose Python layer fails on some interpreters).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise SparseDeployError(
            "serving with Triton needs the tritonserver binary from the nvidia-pytriton wheel, "
            f"which is not installed; install it with: {PYTRITON_INSTALL}"
        )
    package = Path(list(spec.submodule_search_locations)[0])
    root = package / "tritonserver"
    binary = root / "bin" / "tritonserver"
    python_backend = root / "backends" / "python"
    if not binary.is_file() or not (python_backend / "libtriton_python.so").is_file():
        raise SparseDeployError(
            f"the nvidia-pytriton install at '{package}' has no tritonserver binary or Python "
            f"backend; reinstall it with: {PYTRITON_INSTALL}"
        )
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").glob("*") if p.is_dir())
        raise SparseDeployError(
            f"nvidia-pytriton has Python-backend stubs for Python {', '.join(have)}, not for this "
            f"Python {version}; use one of those"
        )
    libs = package.parent / "nvidia_pytriton.libs"
    caches = root / "caches"
    return TritonDistribution(binary, python_backend, stub, libs, caches if caches.is_dir() else None)


def _die_with_parent():
    """A preexec_fn: on Linux, the server gets SIGTERM when the thread that started it dies, so
    even a parent killed with SIGKILL leaves no server behind. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return preexec


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the server retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _python_paths() -> list[str]:
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = [package_parent, *site.getsitepackages()]
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user and Path(user).is_dir():
        paths.append(user)
    return paths


def server_environment(dist: TritonDistribution, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its Python-backend stubs need (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    ld = [p for p in (libdir, str(dist.libs), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
    env["PYTHONPATH"] = os.pathsep.join([*_python_paths(), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class TritonServer:
    """A ``tritonserver`` process serving ``repository``: a context manager that always stops it.

    Args:
        repository: the model repository folder.
        host: address to bind (loopback by default).
        http_port / grpc_port: fixed ports, or free ones when None.
        startup_timeout: seconds to wait for readiness (model loading included), per attempt.
        attempts: starts to try; a start that times out or hits a taken port is retried.
        log_path: where the server log goes (default: inside a temporary work folder).
        extra_args: more ``tritonserver`` flags.
    """

    def __init__(
        self,
        repository: str | Path,
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        startup_timeout: float = 120.0,
        attempts: int = 2,
        log_path: str | Path | None = None,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
    ):
        self.repository = Path(repository).resolve()
        self.host = host
        self._fixed_ports = (http_port, grpc_port)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.startup_timeout = startup_timeout
        self.attempts = max(1, attempts)
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self._requested_log = Path(log_path) if log_path else None
        self.log_path: Path | None = None
        self.process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._shm_prefix = f"{_SHM_PREFIX}{os.getpid()}{uuid.uuid4().hex[:6]}_"
        self.last_log = ""  # the log's tail, kept when a temporary log is removed on stop

    # -- addresses ----------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def url(self, protocol: str) -> str:
        return self.http_url if protocol == "http" else self.grpc_url

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> TritonServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _prepare(self, dist: TritonDistribution) -> Path:
        remove_stale_server_files()  # what a killed predecessor left
        work = Path(tempfile.mkdtemp(prefix=f"{_WORK_PREFIX}{os.getpid()}-"))
        backend = work / "backends" / "python"
        shutil.copytree(dist.python_backend, backend, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(dist.stub, backend / "triton_python_backend_stub")
        return work

    def _command(self, dist: TritonDistribution) -> list[str]:
        assert self._workdir is not None
        cmd = [
            str(dist.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._workdir / 'backends'}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=10",
            f"--log-verbose={self.log_verbose}",
        ]
        if dist.caches is not None:
            cmd.append(f"--cache-directory={dist.caches}")
        return cmd + self.extra_args

    def start(self) -> TritonServer:
        """Start the server and wait until it is ready; retries with new ports if one was taken."""
        if not self.repository.is_dir():
            raise SparseDeployError(
                f"model repository '{self.repository}' does not exist; write one with python -m sparse_deploy.triton"
            )
        if not repository_models(self.repository):
            raise SparseDeployError(
                f"model repository '{self.repository}' holds no models (no <model>/config.pbtxt); "
                "write one with python -m sparse_deploy.triton"
            )
        for flag, port in zip(("--http-port", "--grpc-port"), self._fixed_ports, strict=True):
            if port is not None and port_in_use(self.host, port):
                raise SparseDeployError(
                    f"port {port} on {self.host} is already in use (another server?); pass another "
                    f"{flag}, or 0 for any free port"
                )
        dist = find_tritonserver()
        atexit.register(self.stop)  # an interpreter exiting without __exit__ still stops it
        self._workdir = self._prepare(dist)
        self.log_path = self._requested_log or self._workdir / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = server_environment(dist)
        for attempt in range(self.attempts):
            self.http_port = self._fixed_ports[0] or free_port(self.host)
            self.grpc_port = self._fixed_ports[1] or free_port(self.host)
            while self.grpc_port == self.http_port:
                self.grpc_port = free_port(self.host)
            with open(self.log_path, "ab") as log_file:
                # A new session: the server and its stubs form one process group, stopped as one.
                self.process = subprocess.Popen(
                    self._command(dist),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=self._workdir,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),
                )
            log.info(
                "tritonserver pid %d on http %s, grpc %s (log %s)",
                self.process.pid,
                self.http_url,
                self.grpc_url,
                self.log_path,
            )
            try:
                self.wait_ready(self.startup_timeout)
                if self.process.poll() is not None:  # "ready" came from someone else on these ports
                    raise SparseDeployError(
                        f"tritonserver exited (status {self.process.returncode}) while another server "
                        "answered on its ports"
                    )
                return self
            except SparseDeployError as exc:
                exited = self.process.poll() is not None
                tail = self.log_tail().lower()
                self._terminate()
                port_clash = exited and any(m in tail for m in _PORT_IN_USE) and not any(self._fixed_ports)
                # A load that never finishes (seen once here under heavy CPU load, every model
                # process idle) is retried once; a server that exited on a model error is not.
                if attempt == self.attempts - 1 or not (port_clash or not exited):
                    raise exc
                log.warning(
                    "tritonserver %s; restarting it (attempt %d of %d)",
                    "hit a port clash" if port_clash else f"was not ready within {self.startup_timeout:.0f} s",
                    attempt + 2,
                    self.attempts,
                )
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        """Poll ``/v2/health/ready`` until ready, the process exits, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise SparseDeployError(
                    f"tritonserver exited (status {code}) before it was ready:\n{self.log_summary()}"
                )
            if self.is_ready():
                log.info("tritonserver ready after %.1f s", timeout - (deadline - time.monotonic()))
                return
            time.sleep(0.25)
        raise SparseDeployError(f"tritonserver was not ready within {timeout:.0f} s:\n{self.log_summary()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def log_summary(self) -> str:
        """The log's error lines (Triton prefixes them with ``E``) and its last lines."""
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        errors = [line for line in text if line.startswith("E") and line[1:5].isdigit()][-10:]
        parts = (["errors in its log:", *errors] if errors else []) + ["its log ends with:", *text[-12:]]
        return "\n".join(parts)

    def _terminate(self, grace: float = 15.0) -> None:
        proc = self.process
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("tritonserver did not stop within %.0f s; killing its process group", grace)
        # Stubs left behind by a server that died or hung go with the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (idempotent): SIGTERM, then SIGKILL to its process group; clean up."""
        atexit.unregister(self.stop)
        self._terminate()
        for region in Path("/dev/shm").glob(f"{self._shm_prefix}*") if Path("/dev/shm").is_dir() else ():
            with contextlib.suppress(OSError):
                region.unlink()
        if self._workdir is not None:
            if self._requested_log is None and self.log_path is not None and self.log_path.is_file():
                self.last_log = self.log_tail(200)
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            if self._requested_log is None:
                self.log_path = None

    def __repr__(self) -> str:
        state = "running" if self.process is not None and self.process.poll() is None else "stopped"
        return f"TritonServer({str(self.repository)!r}, http={self.http_url}, grpc={self.grpc_url}, {state})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=MODULE_PROG + "triton.server",
        description="Serve a model repository with the tritonserver binary from the nvidia-pytriton "
        "wheel (CPU, Python backend).",
    )
    parser.add_argument(
        "--model-repository",
        dest="repository",
        type=Path,
        required=True,
        help="model repository to serve (written by python -m sparse_deploy.triton --out ...; tritonserver's name)",
    )
    add_alias(parser, "--repository", "--model-repository")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000; 0 = any free port)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0 = any free port)")
    parser.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds to wait until ready (default 300)"
    )
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--log", type=Path, help="server log file (default: a temporary file, tail shown on errors)")
    return finish_parser(parser)


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through ``with TritonServer`` so the server is stopped


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, port in (("--http-port", args.http_port), ("--grpc-port", args.grpc_port)):
        if not 0 <= port <= 65535:
            raise SparseDeployError(f"{flag} must be between 0 and 65535, got {port}")
    if args.http_port and args.http_port == args.grpc_port:
        raise SparseDeployError(f"--http-port and --grpc-port are both {args.http_port}; give two ports")
    if args.startup_timeout <= 0 or (args.duration is not None and args.duration <= 0):
        raise SparseDeployError("--startup-timeout and --duration must be positive")
    if args.log is not None:
        check_output_file(args.log, "--log")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    server = TritonServer(
        args.repository,
        host=args.host,
        http_port=args.http_port or None,
        grpc_port=args.grpc_port or None,
        startup_timeout=args.startup_timeout,
        log_path=args.log,
    )
    with server:
        print(f"serving {args.repository}: HTTP {server.http_url}, gRPC {server.grpc_url} (Ctrl-C stops)", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while deadline is None or time.monotonic() < deadline:
            if server.process is None or server.process.poll() is not None:
                raise SparseDeployError(f"tritonserver exited; its log ends with:\n{server.log_tail()}")
            time.sleep(1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
