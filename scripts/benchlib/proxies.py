"""Configurations of nginx and of the proxies under test."""

import os

from benchlib.system import LOAD_CPU, PROXY_CPU, Service

CIPHERSUITE = "TLS_AES_128_GCM_SHA256"


def nginx_service(workdir, port, fd_limit):
    www = os.path.join(workdir, "www")
    os.makedirs(os.path.join(www, "files"), exist_ok=True)
    for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(workdir, "nginx-temp", temp), exist_ok=True)
    config = f"""
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {fd_limit};
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections {fd_limit - 100}; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 600s;
    keepalive_requests 1000000000;
    client_body_temp_path {workdir}/nginx-temp/body;
    proxy_temp_path {workdir}/nginx-temp/proxy;
    fastcgi_temp_path {workdir}/nginx-temp/fastcgi;
    uwsgi_temp_path {workdir}/nginx-temp/uwsgi;
    scgi_temp_path {workdir}/nginx-temp/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = /tiny {{ return 200 "ok\\n"; }}
        location = /upload {{ client_max_body_size 0; return 200 "ok\\n"; }}
        location /files/ {{ }}
    }}
}}
"""
    path = os.path.join(workdir, "nginx.conf")
    with open(path, "w") as conf:
        conf.write(config)
    return Service("nginx", ["nginx", "-c", path, "-e", os.path.join(workdir, "nginx-error.log")],
                   LOAD_CPU, os.path.join(workdir, "nginx.log"), port)


def write_bulk_file(workdir, size):
    path = os.path.join(workdir, "www", "files", "bulk.bin")
    chunk = os.urandom(1024 * 1024)
    with open(path, "wb") as out:
        for _ in range(size // len(chunk)):
            out.write(chunk)
    return "/files/bulk.bin"


def proxy_service(name, workdir, port, backend_port, max_connections, tlsplice_bin):
    """Return a Service for one proxy, or raise RuntimeError when it is not available."""
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    log_path = os.path.join(workdir, f"{name}.log")
    config_path = os.path.join(workdir, f"{name}.conf")

    if name == "haproxy":
        config = f"""global
    nbthread 1
    maxconn {max_connections}
    ssl-default-bind-ciphersuites {CIPHERSUITE}
    ssl-default-bind-options ssl-min-ver TLSv1.3
    tune.ssl.cachesize 20000
defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
frontend bench
    bind 127.0.0.1:{port} ssl crt {workdir}/combined.pem curves X25519
    maxconn {max_connections}
    default_backend nginx
backend nginx
    server nginx 127.0.0.1:{backend_port} maxconn {max_connections}
"""
        argv = ["haproxy", "-db", "-f", config_path]
    elif name == "stunnel":
        config = f"""foreground = yes
pid =
debug = warning
[bench]
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{backend_port}
cert = {cert}
key = {key}
sslVersionMin = TLSv1.3
ciphersuites = {CIPHERSUITE}
curves = X25519
TIMEOUTidle = 600
"""
        argv = ["stunnel4", config_path]
    elif name in ("tlsplice", "tlsplice-noprivsep"):
        if not tlsplice_bin or not os.access(tlsplice_bin, os.X_OK):
            raise RuntimeError(f"tlsplice binary not found at {tlsplice_bin}; build it with "
                               "`cargo build --release` or pass --tlsplice PATH")
        # tlsplice-noprivsep measures what privilege separation (on by default
        # as root) costs, against the same binary.
        privsep = "privsep = no\n" if name == "tlsplice-noprivsep" else ""
        config = f"""foreground = yes
debug = warning
threads = 1
{privsep}[bench]
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{backend_port}
cert = {cert}
key = {key}
ciphersuites = {CIPHERSUITE}
"""
        argv = [tlsplice_bin, config_path]
    else:
        raise RuntimeError(f"unknown proxy {name}; expected haproxy, stunnel, tlsplice or "
                           "tlsplice-noprivsep")

    with open(config_path, "w") as conf:
        conf.write(config)
    return Service(name, argv, PROXY_CPU, log_path, port)
