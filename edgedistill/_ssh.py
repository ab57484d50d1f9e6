"""Commands on another machine through the system's OpenSSH client (``ssh``), with the user's own
``~/.ssh/config``, keys and ``known_hosts``.

Every call runs ``ssh -o BatchMode=yes`` (a password or host-key prompt can never hang a run), the
options a user gives (``-o KEY=VALUE``: a target's ``ssh_options``, ``bench --ssh-option``), then
``ConnectTimeout`` and ``ServerAliveInterval`` so an unreachable device or a dropped connection ends in
seconds. Host-key checking is left as the user configured it: nothing here turns it off. ssh's own failures
(exit status 255) become one sentence naming the host and what to do (:func:`ssh_failure`).
Stdlib only: the bench imports it on a board.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass

from .errors import ConfigError, EdgeDistillError

SSH_FAILED = 255  # ssh's exit status for its own errors (connection, authentication, host key)
_USER = r"[A-Za-z0-9._][A-Za-z0-9._-]*"
_HOST = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_SPEC = re.compile(rf"(?:(?P<user>{_USER})@)?(?:\[(?P<ip6>[0-9A-Fa-f:.%]+)\]|(?P<host>{_HOST}))(?::(?P<port>\d+))?")
_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9]*=\S.*")
_DEFAULTS = ("ConnectTimeout=15", "ServerAliveInterval=10", "ServerAliveCountMax=3")


class RemoteError(EdgeDistillError):
    """The remote device cannot be reached, refuses us, or fails in the middle of a job."""


@dataclass(frozen=True)
class Remote:
    """``[USER@]HOST[:PORT]``: where ``ssh`` connects (user and port default to the user's ssh config)."""
    host: str
    user: str | None = None
    port: int | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")

    def ssh_command(self) -> str:
        """The plain ``ssh`` line a user can try by hand."""
        return shlex.join(["ssh"] + (["-p", str(self.port)] if self.port else []) + [self.destination])


def parse_remote(spec: str, where: str = "remote") -> Remote:
    """``USER@HOST``, ``USER@HOST:PORT``, ``HOST`` (an alias of ``~/.ssh/config``), ``USER@[IPv6]:PORT``."""
    m = _SPEC.fullmatch(spec.strip()) if isinstance(spec, str) else None
    port = int(m.group("port")) if m and m.group("port") else None
    if m is None or (port is not None and not 1 <= port <= 65535):
        raise ConfigError(f"{where}: {spec!r} is not USER@HOST[:PORT] (port 1-65535); pass e.g. pi@192.168.1.20 "
                          "or pi@raspberrypi.local:2222.")
    return Remote(host=m.group("ip6") or m.group("host"), user=m.group("user"), port=port)


def check_ssh_options(options: list[str], where: str = "ssh_options") -> list[str]:
    """Each option is one ``KEY=VALUE`` for ``ssh -o`` (e.g. ``IdentityFile=~/.ssh/pi``)."""
    for i, opt in enumerate(options):
        if not isinstance(opt, str) or not _OPTION.fullmatch(opt):
            raise ConfigError(f"{where}[{i}]: {opt!r} is not an ssh option KEY=VALUE; write it as for `ssh -o`, "
                              "e.g. IdentityFile=~/.ssh/pi_key.")
    return list(options)


class SSH:
    """Run commands on ``remote``; ``options`` are ``KEY=VALUE`` strings given to ``ssh -o``."""

    def __init__(self, remote: Remote, options: list[str] = ()):
        self.remote = remote
        self.options = check_ssh_options(list(options))
        if shutil.which("ssh") is None:
            raise RemoteError(f"{remote}: no `ssh` command on this machine; install the OpenSSH client "
                              "(Debian/Ubuntu: apt-get install openssh-client).")

    def argv(self, command: str) -> list[str]:
        # ssh keeps the first value it reads for each option: BatchMode and the --remote port first, then the
        # user's options, then our defaults (which the user's options and ~/.ssh/config can still set)
        opts = ["BatchMode=yes"] + ([f"Port={self.remote.port}"] if self.remote.port else []) + self.options
        opts += list(_DEFAULTS)
        return ["ssh"] + [a for o in opts for a in ("-o", o)] + ["-T", "--", self.remote.destination, command]

    def run(self, command: str, doing: str, stdin=None, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run ``command`` (a line for the remote shell); ssh's own failures raise a :class:`RemoteError` that
        says what failed while ``doing`` (e.g. "copying the models"); other exit statuses are the caller's."""
        try:
            done = subprocess.run(self.argv(command), stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.remote}: no answer within {timeout:g} s while {doing}; check that the device "
                              f"is up and that `{self.remote.ssh_command()}` works.") from None
        if done.returncode == SSH_FAILED:
            raise ssh_failure(self.remote, done.stderr, doing)
        return done


_FAILURES = (  # (what ssh prints, what it means and what to do); the first match wins
    ("REMOTE HOST IDENTIFICATION HAS CHANGED",
     "its host key does not match the one in your known_hosts (a reinstalled device, or someone in between); "
     "check the device's key, then replace the old line (`ssh-keygen -R {kh}`) and connect once by hand"),
    ("Host key verification failed",
     "its host key is not in your known_hosts; connect once by hand (`{cmd}`), check the fingerprint and accept it"),
    ("Permission denied",
     "no SSH access (the key was refused); install your public key there (`ssh-copy-id`) or name the right key "
     "with --ssh-option IdentityFile=PATH"),
    ("Connection refused", "nothing accepts SSH connections there; check the host and port and that sshd runs"),
    ("Could not resolve hostname", "the host name does not resolve; check its spelling or use its IP address"),
    ("No route to host", "the device cannot be reached; check that it is on and on the network"),
    ("Network is unreachable", "the device cannot be reached; check that it is on and on the network"),
    ("Connection timed out", "the device does not answer; check that it is on and on the network"),
    ("closed by remote host", "the SSH connection dropped; check the device (power, network) and run again"),
    ("Connection reset", "the SSH connection dropped; check the device (power, network) and run again"),
    ("Broken pipe", "the SSH connection dropped; check the device (power, network) and run again"),
    ("not responding", "the SSH connection dropped (the device stopped answering); check it and run again"),
)


def ssh_failure(remote: Remote, stderr: str, doing: str) -> RemoteError:
    """One sentence for an ``ssh`` that exited 255 while ``doing``, from what ssh printed."""
    kh = shlex.quote(f"[{remote.host}]:{remote.port}" if remote.port else remote.host)
    for needle, meaning in _FAILURES:
        if needle.lower() in stderr.lower():
            return RemoteError(f"{remote}: {meaning.format(kh=kh, cmd=remote.ssh_command())} "
                               f"(ssh failed while {doing}).")
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "no message")
    return RemoteError(f"{remote}: ssh failed while {doing} ({last}); check that `{remote.ssh_command()}` works.")
