"""A throw-away single-node Slurm cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) for tests.

Debian's packages (``slurm-wlm munge slurmdbd mariadb-server``) provide the binaries; every
daemon runs by hand (no systemd) with its state, sockets, logs and PID files under one state
directory (default ``/tmp/cmcl-slurm``). The only file written outside it is
``/etc/slurm/slurm.conf``: Slurm's client commands read that path, and the executor plugin's job
step strips ``SLURM_*`` variables, so a ``SLURM_CONF`` elsewhere would break ``srun`` in jobs.
An existing slurm.conf is backed up and restored.

    with SlurmCluster() as cluster:      # needs root; ensure_installed() first
        subprocess.run(["sbatch", "-p", cluster.partition, "--wrap", "true"])

Every process this module starts carries ``CMCL_SLURM_CLUSTER=<state dir>`` in its environment
(slurmstepd inherits it from slurmd), so a later run finds and stops leftovers of a crashed one,
by PID, and never touches anyone else's processes.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
BINARIES = ("slurmctld", "slurmd", "slurmdbd", "sinfo", "sbatch", "sacct", "sacctmgr", "munged",
            "munge", "unmunge", "mariadbd", "mariadb-install-db", "mariadb")
SBIN = ("/usr/sbin", "/sbin", "/usr/bin")
MARKER = "CMCL_SLURM_CLUSTER"
CONF = Path("/etc/slurm/slurm.conf")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
HEADER = "# written by cmcl tests/helpers/slurm.py; restored on exit"
# ours too: the header of confs written before the move (a crashed run's leftover)
OURS = (HEADER, "# written by cmcl tests/slurm_cluster.py; restored on exit")
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")  # start order


class SlurmSetupError(RuntimeError):
    """The cluster could not be installed or started; the message says where to look."""


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if which(b) is None]


def ensure_installed(timeout: float = 900) -> None:
    """apt-get install Slurm, munge, slurmdbd and MariaDB unless their binaries are present."""
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        raise SlurmSetupError(f"missing {missing_binaries()}; installing them needs root")
    if which("apt-get") is None:
        raise SlurmSetupError(f"missing {missing_binaries()} and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    log = ""
    for cmd in (install, ["apt-get", "update", "-q"], install):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        log += f"$ {' '.join(cmd)}  (exit {p.returncode})\n{p.stdout[-2000:]}{p.stderr[-2000:]}\n"
        if cmd is install and p.returncode == 0:
            break
    if missing_binaries():
        raise SlurmSetupError(f"apt-get could not install {' '.join(PACKAGES)}; still missing "
                              f"{missing_binaries()}:\n{log}")


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] \
        if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")


def _stop_pids(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL whatever is left."""
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _free_port(preferred: int) -> int:
    for port in [preferred, *range(preferred + 100, preferred + 200)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SlurmSetupError(f"no free TCP port near {preferred}")


class SlurmCluster:
    """Context manager: a running one-node cluster; `partition` names its only partition."""

    def __init__(self, state_dir: str | Path | None = None, partition: str = "main",
                 cluster_name: str = "cmcl", cpus: int | None = None,
                 start_timeout: float = 120.0):
        self.state = Path(state_dir or os.environ.get("CMCL_SLURM_STATE", "/tmp/cmcl-slurm"))
        self.partition = partition
        self.cluster_name = cluster_name
        self.start_timeout = start_timeout
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1  # more than the hardware's: oversubscribed
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock = None
        self._backup = self.state / "slurm.conf.orig"
        self._made_munge_dir = False

    # ---- paths ----------------------------------------------------------------------------
    @property
    def etc(self) -> Path:
        return self.state / "etc"

    @property
    def logs(self) -> Path:
        return self.state / "log"

    def _pidfile(self, name: str) -> Path:
        return self.state / "run" / f"{name}.pid"

    # ---- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise SlurmSetupError("a test Slurm cluster needs root")
        if missing_binaries():
            raise SlurmSetupError(f"missing {missing_binaries()}: call ensure_installed() first")
        self.state.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o755)
        self._lock = open(self.state / "lock", "w")  # noqa: SIM115 - held until stop()
        deadline = time.monotonic() + 300
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as err:
                if time.monotonic() > deadline:
                    raise SlurmSetupError(f"{self.state}/lock: another run holds it") from err
                time.sleep(1)
        try:
            foreign = self._foreign_slurm()
            if foreign:
                raise SlurmSetupError(f"a Slurm daemon not started by this module is running "
                                      f"(PIDs {foreign}); refusing to replace its config")
            self._kill_leftovers()
            self._prepare_dirs()
            self._write_configs()
            self._start_munge()
            self._start_mariadb()
            self._start_slurmdbd()
            self._start_slurmctld()
            self._start_slurmd()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel jobs, stop every daemon (reverse start order) and leftover slurmstepd, by PID."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--quiet", "--cluster", self.cluster_name, "-u", "root"],
                           capture_output=True, timeout=30, check=False)
            self._wait(lambda: not self._cmd(["squeue", "-h"], check=False).strip(), 15,
                       "jobs to end", fail=False)
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            pids = [proc.pid] if proc is not None else []
            pids += [p for p in self._pidfile_pids(name) if p not in pids]
            _stop_pids([p for p in pids if self._ours(p)], grace=15)
            if proc is not None:
                proc.wait(timeout=5)
            self._pidfile(name).unlink(missing_ok=True)
        self._kill_leftovers()
        self._restore_conf()
        if self._made_munge_dir:
            try:
                MUNGE_SOCKET.parent.rmdir()  # only if munged left it empty
            except OSError:
                pass
            self._made_munge_dir = False
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ---- commands ---------------------------------------------------------------------------
    def _cmd(self, cmd: list[str], check: bool = True, timeout: float = 30) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            if check:
                raise
            return ""
        if check and p.returncode != 0:
            raise SlurmSetupError(f"{' '.join(cmd)} failed ({p.returncode}): "
                                  f"{p.stdout}{p.stderr}")
        return p.stdout if p.returncode == 0 else ""

    def sacct(self, *fields: str, workdir: str | Path | None = None,
              steps: bool = False) -> list[dict[str, str]]:
        """Jobs of the last two days as dicts, optionally only those run in `workdir`; with
        `steps`, their steps (batch, 0, ...) instead of the allocations."""
        fields = fields or ("JobID", "JobName", "State", "ExitCode", "WorkDir", "Comment")
        fields = tuple(dict.fromkeys(("JobID", *fields, "WorkDir")))
        cmd = ["sacct", "--parsable2", "--noheader", "--starttime", "now-2days",
               "--format", ",".join(fields)]
        out = self._cmd(cmd if steps else [*cmd, "-X"])
        rows = [dict(zip(fields, line.split("|"), strict=False)) for line in out.splitlines()]
        if workdir is not None:
            ids = {r["JobID"] for r in rows if "." not in r["JobID"]
                   and r["WorkDir"] and Path(r["WorkDir"]) == Path(workdir)}
            rows = [r for r in rows if r["JobID"].split(".")[0] in ids]
        return [r for r in rows if "." in r["JobID"]] if steps else rows

    # ---- processes ----------------------------------------------------------------------------
    def _ours(self, pid: int) -> bool:
        return _environ(pid).get(MARKER) == str(self.state)

    def _pidfile_pids(self, name: str) -> list[int]:
        try:
            return [int(self._pidfile(name).read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    def _marked_pids(self) -> list[int]:
        return [int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and int(p.name) != os.getpid() and self._ours(int(p.name))]

    def _foreign_slurm(self) -> list[int]:
        return [int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and _comm(int(p.name)) in ("slurmctld", "slurmd", "slurmdbd")
                and not self._ours(int(p.name))]

    def _kill_leftovers(self) -> None:
        """Processes of an earlier (crashed) run of this state dir: stale PIDs are checked."""
        stale = [p for n in DAEMONS for p in self._pidfile_pids(n) if self._ours(p)]
        # job steps first (they belong to slurmstepd), daemons last
        marked = sorted(set(self._marked_pids()) | set(stale),
                        key=lambda p: _comm(p) in DAEMONS)
        if marked:
            _stop_pids(marked, grace=10)
        for name in DAEMONS:
            self._pidfile(name).unlink(missing_ok=True)

    def _spawn(self, name: str, cmd: list[str], user: str | None = None) -> subprocess.Popen:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "SLURM_CONF": str(self.etc / "slurm.conf"), MARKER: str(self.state),
               "LANG": "C.UTF-8"}
        log = open(self.logs / f"{name}.out", "ab")  # noqa: SIM115 - child keeps it
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, cwd=self.state, user=user, start_new_session=True)
        finally:
            log.close()
        self.procs[name] = proc
        self._pidfile(name).write_text(f"{proc.pid}\n")
        return proc

    def _wait(self, ok, timeout: float, what: str, fail: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None and fail:
                    raise SlurmSetupError(f"{name} exited ({proc.returncode}) while waiting for "
                                          f"{what}\n{self.log_tail(name)}")
            try:
                if ok():
                    return True
            except (SlurmSetupError, subprocess.TimeoutExpired, OSError):
                pass
            time.sleep(0.25)
        if fail:
            raise SlurmSetupError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                  + "\n".join(self.log_tail(n) for n in self.procs))
        return False

    def log_tail(self, name: str, n: int = 3000) -> str:
        text = ""
        for f in sorted(self.logs.glob(f"{name}*")):
            text += f"--- {f}\n{f.read_text(errors='replace')[-n:]}\n"
        return text

    # ---- configuration ----------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        for sub in ("etc", "log", "run", "ctld", "slurmd", "munge"):
            (self.state / sub).mkdir(exist_ok=True)
        for sub in ("ctld", "slurmd"):  # no job state survives from an earlier run
            for f in (self.state / sub).iterdir():
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        for f in self.logs.iterdir():
            f.unlink()
        munge = pwd.getpwnam("munge")
        os.chown(self.state / "munge", munge.pw_uid, munge.pw_gid)
        os.chmod(self.state / "munge", 0o755)
        (self.state / "mysql-run").mkdir(exist_ok=True)
        mysql = pwd.getpwnam("mysql")
        os.chown(self.state / "mysql-run", mysql.pw_uid, mysql.pw_gid)

    def _write_configs(self) -> None:
        s = self.state
        self.ports = {"ctld": _free_port(6817), "slurmd": _free_port(6818),
                      "dbd": _free_port(6819), "mysql": _free_port(3307)}
        self.db_password = "cmcl-test"  # local, loopback-only throw-away database
        # CR_CPU checks --mem against RealMemory without consuming it: requests never serialise
        mem = _mem_total_mb()
        real_memory = max(500, mem - min(2000, mem // 10))
        slurm_conf = f"""{HEADER}
# state: {s}
ClusterName={self.cluster_name}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ports['ctld']}
SlurmdPort={self.ports['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={s}/ctld
SlurmdSpoolDir={s}/slurmd
SlurmctldPidFile={s}/run/slurmctld.daemon.pid
SlurmdPidFile={s}/run/slurmd.daemon.pid
SlurmctldLogFile={s}/log/slurmctld.log
SlurmdLogFile={s}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdParameters=config_overrides
InactiveLimit=0
KillWait=5
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.ports['dbd']}
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={real_memory} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        dbd_conf = f"""# written by cmcl tests/helpers/slurm.py
AuthType=auth/munge
DbdHost=localhost
DbdPort={self.ports['dbd']}
SlurmUser=root
PidFile={s}/run/slurmdbd.daemon.pid
LogFile={s}/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['mysql']}
StorageUser=slurm
StoragePass={self.db_password}
StorageLoc=slurm_acct_db
"""
        (self.etc / "slurm.conf").write_text(slurm_conf)
        dbd = self.etc / "slurmdbd.conf"
        dbd.write_text(dbd_conf)
        os.chown(dbd, 0, 0)  # slurmdbd insists: mode 600, owned by its SlurmUser
        os.chmod(dbd, 0o600)
        self._install_conf(slurm_conf)

    def _install_conf(self, text: str) -> None:
        CONF.parent.mkdir(parents=True, exist_ok=True)
        if CONF.exists() and not CONF.read_text(errors="replace").startswith(OURS):
            if not self._backup.exists():
                shutil.copy2(CONF, self._backup)
        tmp = CONF.with_suffix(".conf.cmcl-tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        tmp.replace(CONF)

    def _restore_conf(self) -> None:
        if self._backup.exists():
            shutil.copy2(self._backup, CONF)
            self._backup.unlink()
        elif CONF.exists() and CONF.read_text(errors="replace").startswith(OURS):
            CONF.unlink()

    # ---- daemons ----------------------------------------------------------------------------
    def _munge_works(self) -> bool:
        munge, unmunge = which("munge"), which("unmunge")
        if not (munge and unmunge and MUNGE_SOCKET.exists()):
            return False
        p = subprocess.run(f"{munge} -n -S {MUNGE_SOCKET} | {unmunge} -S {MUNGE_SOCKET}",
                           shell=True, capture_output=True, timeout=10, check=False)
        return p.returncode == 0

    def _start_munge(self) -> None:
        """Reuse a munged already serving the default socket, else start one there.

        Slurm 22.05's clients ignore AuthInfo=socket=... on their slurmdbd connections (sacctmgr
        and sacct always try /run/munge/munge.socket.2), so the socket cannot move elsewhere.
        """
        if self._munge_works():
            return
        d = self.state / "munge"
        key = d / "munge.key"
        munge = pwd.getpwnam("munge")
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o600)
        if not MUNGE_SOCKET.parent.exists():
            MUNGE_SOCKET.parent.mkdir(parents=True)
            self._made_munge_dir = True
        os.chown(MUNGE_SOCKET.parent, munge.pw_uid, munge.pw_gid)
        os.chmod(MUNGE_SOCKET.parent, 0o755)
        self._spawn("munged", [which("munged"), "--foreground", "--force",
                               f"--socket={MUNGE_SOCKET}", f"--key-file={key}",
                               f"--pid-file={d}/munged.pid", f"--log-file={self.logs}/munged.log",
                               f"--seed-file={d}/munged.seed"],
                    user="munge")
        self._wait(self._munge_works, 20, "munged")

    def _mysql(self, sql: str) -> str:
        return self._cmd([which("mariadb"), "--no-defaults", f"--socket={self._mysql_sock}",
                          "-u", "root", "-e", sql])

    def _start_mariadb(self) -> None:
        data = self.state / "mysql"
        self._mysql_sock = self.state / "mysql-run" / "mysqld.sock"
        mysql = pwd.getpwnam("mysql")
        if not (data / "mysql").is_dir():
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir()
            os.chown(data, mysql.pw_uid, mysql.pw_gid)
            self._cmd([which("mariadb-install-db"), "--no-defaults", "--user=mysql",
                       f"--datadir={data}", "--auth-root-authentication-method=socket",
                       "--skip-test-db"], timeout=120)
        self._spawn("mariadbd", [which("mariadbd"), "--no-defaults", "--user=mysql",
                                 f"--datadir={data}", f"--socket={self._mysql_sock}",
                                 f"--port={self.ports['mysql']}", "--bind-address=127.0.0.1",
                                 f"--pid-file={self.state}/mysql-run/mariadbd.pid",
                                 f"--log-error={self.logs}/mariadbd.log",
                                 "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M",
                                 "--innodb-lock-wait-timeout=900", "--skip-log-bin"])
        self._wait(lambda: self._mysql("SELECT 1") is not None, 60, "MariaDB")
        pw = self.db_password
        self._mysql(
            "CREATE DATABASE IF NOT EXISTS slurm_acct_db;"
            + "".join(f"CREATE USER IF NOT EXISTS 'slurm'@'{h}' IDENTIFIED BY '{pw}';"
                      f"ALTER USER 'slurm'@'{h}' IDENTIFIED BY '{pw}';"
                      f"GRANT ALL ON slurm_acct_db.* TO 'slurm'@'{h}';"
                      for h in ("localhost", "127.0.0.1"))
            + "FLUSH PRIVILEGES;")

    def _start_slurmdbd(self) -> None:
        self._spawn("slurmdbd", [which("slurmdbd"), "-D"])
        self._wait(lambda: self._cmd(["sacctmgr", "-n", "-P", "list", "cluster"]) is not None,
                   60, "slurmdbd (sacctmgr list cluster)")
        clusters = self._cmd(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"])
        if self.cluster_name not in clusters.split():
            self._cmd(["sacctmgr", "-i", "add", "cluster", self.cluster_name])

    def _start_slurmctld(self) -> None:
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-c", "-i"])
        self._wait(lambda: self._cmd(["scontrol", "ping"]).count("UP") >= 1, 60, "slurmctld")

    def _start_slurmd(self) -> None:
        self._spawn("slurmd", [which("slurmd"), "-D", "-N", self.node])

    def _wait_ready(self) -> None:
        def idle() -> bool:
            state = self._cmd(["sinfo", "-h", "-N", "-n", self.node, "-o", "%t"]).strip()
            if state.startswith(("drain", "down")):
                self._cmd(["scontrol", "update", f"nodename={self.node}", "state=resume"],
                          check=False)
            return state == "idle"

        self._wait(idle, self.start_timeout, f"node {self.node} idle in sinfo")
        self._wait(lambda: self.cluster_name in self._cmd(
            ["sacctmgr", "-n", "-P", "show", "association", "format=cluster"]),
            60, "the cluster's associations in slurmdbd")


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4000


def main() -> None:  # manual use: python tests/helpers/slurm.py  (Ctrl-C stops the cluster)
    ensure_installed()
    with SlurmCluster() as c:
        print(f"cluster {c.cluster_name} up: partition {c.partition}, state {c.state}", flush=True)
        print(c._cmd(["sinfo"]), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
