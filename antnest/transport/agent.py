"""The ssh-agent a relay signs with: keys stay on the master, the relay's ssh asks for
signatures through the forwarded agent (nothing is written on the relay).

Which agent: when no host behind a relay names an identity file and the user runs an agent
(``SSH_AUTH_SOCK``), that agent is forwarded, as ``ssh -A`` would. Otherwise antnest starts a
private ``ssh-agent`` of its own for the run (a child that dies with antnest, its socket in a
0700 directory removed at the end) and loads into it the identity files the hosts name, or
``~/.ssh/id_*`` when they name none. The user's own agent is never changed.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Iterable, List, Optional, Set

from antnest.errors import AuthError

DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
START_BOUND = 5.0     # seconds ssh-agent gets to make its socket
ADD_BOUND = 15.0      # seconds ssh-add gets


class PrivateAgent:
    """One ssh-agent process of antnest's, holding the keys relays need."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir: Optional[str] = None
        self._proc: Optional["subprocess.Popen[bytes]"] = None
        self._loaded: Set[str] = set()

    @property
    def socket(self) -> Optional[str]:
        return None if self._dir is None else os.path.join(self._dir, "agent")

    def load(self, host: str, files: Iterable[str]) -> str:
        """Start the agent if need be and add `files` to it; its socket path. Raises an
        AuthError naming `host` and the file when a key cannot be loaded (a passphrase)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start(host)
            sock = self.socket
            assert sock is not None
            for path in files:
                if path not in self._loaded:
                    self._add(host, sock, path)
                    self._loaded.add(path)
            return sock

    def _start(self, host: str) -> None:
        from antnest.transport.openssh import _spawn

        self.stop()
        if shutil.which("ssh-agent") is None:
            raise AuthError(host, "relays sign with an ssh-agent, and there is no ssh-agent "
                            "binary on PATH (apt-get install openssh-client), nor an agent of "
                            "yours (SSH_AUTH_SOCK) to forward")
        self._dir = tempfile.mkdtemp(prefix="antnest-agent-")   # mode 0700
        sock = self.socket
        assert sock is not None
        self._proc = _spawn(["ssh-agent", "-D", "-a", sock], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
        deadline = time.monotonic() + START_BOUND
        while not os.path.exists(sock):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AuthError(host, "antnest's ssh-agent for relays did not start")
            time.sleep(0.005)
        self._loaded.clear()

    @staticmethod
    def _add(host: str, sock: str, path: str) -> None:
        env = dict(os.environ, SSH_AUTH_SOCK=sock, SSH_ASKPASS_REQUIRE="never")
        env.pop("DISPLAY", None)
        try:
            done = subprocess.run(["ssh-add", "-q", path], env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=ADD_BOUND,
                                  start_new_session=True)   # no terminal to ask a passphrase on
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AuthError(host, f"cannot load {path} into antnest's agent for relays: "
                            f"{exc}") from None
        if done.returncode != 0:
            said = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise AuthError(host, f"cannot load {path} into antnest's agent for relays "
                            f"({said[-1] if said else f'ssh-add exit status {done.returncode}'}); "
                            "a key with a passphrase must be in your own ssh-agent (ssh-add it) "
                            "and named by no identity file")

    def stop(self) -> None:
        proc, path = self._proc, self._dir
        self._proc, self._dir = None, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


private_agent = PrivateAgent()
atexit.register(private_agent.stop)


def agent_for(host: str, identity_files: Iterable[str]) -> Optional[str]:
    """The agent socket a relay of these identity files forwards; None when there is no key
    at all (the relayed hosts then fail to authenticate, and say so)."""
    named = list(dict.fromkeys(os.path.expanduser(p) for p in identity_files))
    user_agent = os.environ.get("SSH_AUTH_SOCK")
    if not named and user_agent and os.path.exists(user_agent):
        return user_agent
    files: List[str] = [p for p in named if os.path.exists(p)]
    if not named:
        files = [p for p in map(os.path.expanduser, DEFAULT_KEYS) if os.path.exists(p)]
    if not files:
        return None
    return private_agent.load(host, files)
