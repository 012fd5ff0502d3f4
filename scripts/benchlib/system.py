"""Host facilities of the bench script: packages, ports, certificates, /proc
readings and the processes it starts."""

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROXY_CPU = "0"

LOAD_CPU = "1"

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

FD_MARGIN = 300  # file descriptors kept free for listeners, logs and pipes


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def ensure_packages(names):
    """Install the Debian packages whose commands are missing."""
    commands = {"stunnel4": "stunnel4", "haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk"}
    missing = [pkg for pkg in names if shutil.which(commands[pkg]) is None]
    if not missing:
        return
    log(f"installing missing packages with apt-get: {' '.join(missing)}")
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", *missing], check=True)


def raise_fd_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit (what `ulimit -n` does) and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, process, timeout=15.0):
    """Poll-connect until the port accepts. Returns False if the process exited or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def make_certificates(workdir):
    """Create a CA and an ECDSA P-256 leaf for localhost and 127.0.0.1 with openssl."""

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    path = lambda name: os.path.join(workdir, name)  # noqa: E731
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", path("ca.key"), "-out", path("ca.pem"), "-days", "7", "-subj", "/CN=tlsplice bench CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", path("key.pem"), "-out", path("leaf.csr"), "-subj", "/CN=localhost")
    with open(path("leaf.ext"), "w") as ext:
        ext.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                  "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", path("leaf.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
            "-CAcreateserial", "-days", "7", "-extfile", path("leaf.ext"), "-out", path("cert.pem"))
    # haproxy reads the certificate and its key from one file.
    with open(path("combined.pem"), "w") as combined:
        for name in ("cert.pem", "key.pem"):
            with open(path(name)) as part:
                combined.write(part.read())
    for name in ("key.pem", "combined.pem", "ca.key"):
        os.chmod(path(name), 0o600)


def build_load_generator():
    log("building tlsplice-load (release)")
    subprocess.run(["cargo", "build", "--release", "--bin", "tlsplice-load"], cwd=REPO, check=True)
    return os.path.join(REPO, "target", "release", "tlsplice-load")


def machine_info():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "host": socket.gethostname(),
        "kernel": os.uname().release,
        "cpu": cpu,
        "cpus": os.cpu_count(),
    }


def tool_version(argv, keyword=None):
    """Return the first output line of a version command, or the first that contains keyword."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (result.stdout + result.stderr).strip().splitlines()
    if keyword:
        lines = [line for line in lines if keyword in line] or lines
    return lines[0].strip() if lines else "unknown"


def process_tree(pid):
    """Return pid and all its descendants, from the ppid field of /proc/*/stat."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def cpu_seconds(pid):
    """Sum utime+stime (all threads) of pid and its descendants, in seconds."""
    ticks = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the ")" that ends the command name, utime and stime are fields 12 and 13.
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def rss_bytes(pid):
    """Sum VmRSS of pid and its descendants, in bytes."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class Service:
    """A process this script started in its own session, pinned with taskset."""

    def __init__(self, name, argv, cpu, log_path, port):
        self.name = name
        self.argv = ["taskset", "-c", cpu, *argv]
        self.log_path = log_path
        self.port = port
        self.process = None

    def start(self):
        log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
        if not wait_for_port(self.port, self.process):
            code = self.process.poll()
            state = "is running" if code is None else f"exited with code {code}"
            self.stop()
            raise RuntimeError(f"{self.name} did not start listening on 127.0.0.1:{self.port} "
                               f"({state}); log: {self.log_tail() or '(empty)'}")

    def running(self):
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self):
        try:
            with open(self.log_path, errors="replace") as log_file:
                return " | ".join(log_file.read().strip().splitlines()[-5:])
        except OSError:
            return "(no log)"
