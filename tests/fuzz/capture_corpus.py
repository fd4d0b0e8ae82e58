#!/usr/bin/python3
"""Records real client-to-server HTTP/2 bytes for the h2_connection_fuzz seed corpus.

Starts a throwaway etcd on loopback, puts a tee between it and real clients (etcdctl, which is
grpc-go, and python-etcd3, which is gRPC core), and writes what each client connection sent,
one file per connection, into tests/fuzz/corpus/h2_connection_fuzz/. Run it by hand when the
seeds should change; the fuzzer never needs etcd itself.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "h2_connection_fuzz")
FRAMING_OUT = os.path.join(HERE, "corpus", "grpc_framing_fuzz")


def framing_seeds():
    """A few hand-made seeds for grpc_framing_fuzz, one per mode (see its header comment)."""
    seeds = {
        # mode 0: limit 1024, 3 messages (len u16, bytes, pad byte), then piece sizes
        "messages": bytes([0, 0x04, 0x00, 3]) + b"\x00\x05hello\x00" + b"\x00\x00\x00" + b"\x04\x10" + b"x" * 64
                    + b"\x00" + bytes(range(1, 40)),
        # mode 1: limit 16, raw stream: a good message, then a compressed one
        "raw_compressed": bytes([1, 0, 16, 0, 14]) + b"\x00\x00\x00\x00\x02hi" + b"\x01\x00\x00\x00\x01z"
                          + bytes([1, 2, 3, 4, 5]),
        "raw_oversize": bytes([1, 0, 4, 0, 10]) + b"\x00\x00\x00\x01\x00abcde" + bytes([7, 7]),
        # mode 2: grpc-timeout values
        "timeout_ms": bytes([2, 4]) + b"100m",
        "timeout_max": bytes([2, 9]) + b"99999999H",
        # mode 3: grpc-message text
        "percent": bytes([3, 0, 12]) + "etcd: \u00e9 %\n".encode(),
    }
    for name, data in seeds.items():
        with open(os.path.join(FRAMING_OUT, name), "wb") as f:
            f.write(data)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tee:
    """Forwards loopback connections to etcd, keeping each connection's client bytes."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.captures = []
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.listener.accept()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # etcd not up yet
                client.close()
                continue
            buf = bytearray()
            with self.lock:
                self.captures.append(buf)
            threading.Thread(target=self.pump, args=(client, upstream, buf), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def pump(src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record is not None:
                    record.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def take(self):
        time.sleep(0.3)  # let the pumps copy the last bytes of a finished client
        with self.lock:
            out = [bytes(b) for b in self.captures]
            self.captures.clear()
        return out


def main():
    framing_seeds()
    data_dir = tempfile.mkdtemp(prefix="esp-capture-")
    client_port, peer_port = free_port(), free_port()
    etcd = subprocess.Popen(
        ["etcd", "--data-dir", data_dir, "--name", "capture",
         "--listen-client-urls", f"http://127.0.0.1:{client_port}",
         "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-cluster", f"capture=http://127.0.0.1:{peer_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tee = Tee(client_port)
        endpoint = f"127.0.0.1:{tee.port}"
        env = dict(os.environ, ETCDCTL_API="3")
        ctl = ["etcdctl", "--endpoints", endpoint, "--dial-timeout", "5s"]
        deadline = time.time() + 20
        while subprocess.run(ctl + ["put", "warmup", "x"], env=env, capture_output=True).returncode != 0:
            if time.time() > deadline:
                sys.exit("etcd did not come up")
            time.sleep(0.2)
        tee.take()
        runs = {
            "etcdctl_put": [ctl + ["put", "foo", "bar"]],
            "etcdctl_get_prefix": [ctl + ["get", "--prefix", "f"]],
            "etcdctl_txn": [ctl + ["txn"], 'value("foo") = "bar"\n\nput foo baz\n\nput foo qux\n\n'],
            "etcdctl_watch": [ctl + ["watch", "foo", "--rev", "1"]],
            "etcdctl_lease_keepalive": [ctl + ["lease", "keep-alive", "--once", "0"]],
            "etcdctl_del": [ctl + ["del", "nokey"]],
        }
        for name, (cmd, *stdin) in runs.items():
            if name == "etcdctl_watch":
                # Watch never ends by itself: wait for the first event, then stop it.
                p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                p.stdout.readline()
                p.terminate()
                p.wait()
            else:
                subprocess.run(cmd, env=env, input=(stdin[0] if stdin else None), text=True, capture_output=True)
            save(name, tee.take())
        try:
            import etcd3  # python-etcd3: gRPC core's HTTP/2
            c = etcd3.client(host="127.0.0.1", port=tee.port)
            c.put("py", "v")
            c.get("py")
            c.transaction(compare=[c.transactions.value("py") == "v"], success=[c.transactions.put("py", "w")],
                          failure=[])
            c.close()
            save("python_etcd3_put_get_txn", tee.take())
        except ImportError:
            print("python3-etcd3 missing: no gRPC core seed", file=sys.stderr)
    finally:
        etcd.terminate()
        etcd.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def save(name, captures):
    for i, data in enumerate(c for c in captures if c):
        path = os.path.join(OUT, f"{name}_{i}.bin")
        with open(path, "wb") as f:
            f.write(data)
        print(f"{path}: {len(data)} bytes")


if __name__ == "__main__":
    main()
