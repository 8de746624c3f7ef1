#!/usr/bin/env python3
"""Test programs for the testbed: a TCP server that tells each client which source address it
saw, and clients that ask it. Standard library only; every call is bounded in time."""
import argparse, os, socket, sys, threading, time


def server(args):
    """Answer every connection with 'seen <addr>\\n', then echo lines until the client leaves."""
    family = socket.AF_INET6 if ":" in args.addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.addr, args.port))
    s.listen(256)

    def handle(c, peer):
        with c:
            try:
                c.sendall(f"seen {peer[0]}\n".encode())
                while True:
                    data = c.recv(4096)
                    if not data:
                        return
                    c.sendall(data)
            except OSError:
                return

    while True:
        c, peer = s.accept()
        threading.Thread(target=handle, args=(c, peer), daemon=True).start()


def udpserver(args):
    """UDP echo: answers every datagram with 'seen ADDR'."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args.addr, args.port))
    while True:
        _, peer = s.recvfrom(512)
        s.sendto(f"seen {peer[0]}".encode(), peer)


def cmd_udp(args):
    """One UDP socket (one flow) sending every 100 ms; prints the wall-clock time of the first
    answer seen from --want, or 'timeout' after --within seconds."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.1)
    s.connect((args.addr, args.port))
    deadline = time.time() + args.within
    first = True
    while time.time() < deadline:
        s.send(b"ping")
        try:
            seen = s.recv(512).decode().split()[1]
        except (socket.timeout, OSError):
            continue
        if first:
            print("first", seen, flush=True)
            first = False
        if seen == args.want:
            print(f"{time.time():.3f}", flush=True)
            return 0
        time.sleep(0.1)
    print("timeout", flush=True)
    return 1


def http(args):
    """HTTP(S) server: 200 for /health, 404 for anything else."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer((args.addr, args.port), Handler)
    if args.cert:
        # HTTPS: the handshake happens on accept; a client that refuses the certificate only
        # fails its own connection.
        import signal, ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        if args.then_cert:
            # SIGUSR1: new connections get the other certificate, with no moment of not
            # listening in between.
            signal.signal(signal.SIGUSR1, lambda *_: ctx.load_cert_chain(args.then_cert, args.then_key))
    server.serve_forever()


def dns(args):
    """DNS responder: answers every A query with the address the query came from (like the
    public "what is my address" names), so a resolver on the router shows which WAN it used."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args.addr, args.port))
    while True:
        q, peer = s.recvfrom(512)
        if len(q) < 12:
            continue
        # Header: same id, QR + RD + RA, one question, one answer; then the question as asked
        # and an answer pointing back at it (name pointer 0xc00c).
        end = q.index(b"\0", 12) + 5
        answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(peer[0])
        s.sendto(q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:end] + answer, peer)


def resolve(args):
    """Send one DNS A query for --name from a fresh socket; print the answer's address (the
    `dns` responder answers with the query's source) or the error."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(args.timeout)
    qid = os.urandom(2)
    name = b"".join(bytes([len(p)]) + p.encode() for p in args.name.split(".")) + b"\0"
    try:
        s.sendto(qid + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01", (args.addr, args.port))
        r = s.recv(512)
    except OSError as e:
        print("error", e.strerror or e)
        return 1
    if r[:2] != qid or len(r) < 4:
        print("error bad answer")
        return 1
    print(socket.inet_ntoa(r[-4:]))
    return 0


def whoami(addr, port, timeout, bind=None, why=None):
    """Source address the server saw for a new connection, or None (and the error appended to
    the list `why`, when given)."""
    try:
        src = (bind, 0) if bind else None
        with socket.create_connection((addr, port), timeout=timeout, source_address=src) as c:
            c.settimeout(timeout)
            line = c.makefile().readline()
            return line.split()[1] if line.startswith("seen ") else None
    except OSError as e:
        if why is not None:
            why.append(e)
        return None


def cmd_whoami(args):
    why = []
    seen = whoami(args.addr, args.port, args.timeout, args.bind, why)
    for e in why:
        # For a failed check to show why there was no answer.
        print(f"whoami {args.addr} port {args.port}: {e}", file=sys.stderr)
    print(seen or "none")
    return 0 if seen else 1


def cmd_count(args):
    """Open --n new connections one after another; print how many the server saw from each
    address, as 'ADDR COUNT' lines."""
    seen = {}
    for _ in range(args.n):
        a = whoami(args.addr, args.port, args.timeout, args.bind) or "none"
        seen[a] = seen.get(a, 0) + 1
    for a, n in sorted(seen.items()):
        print(a, n)
    return 0


def cmd_until(args):
    """Start a new connection every --every seconds (overlapping, each with its own timeout)
    until one is seen from --want; print the wall-clock time at which the first such connection
    had its answer. Overlapping attempts keep the resolution at --every even while attempts
    through a dead link hang until their timeout."""
    found = []
    lock = threading.Lock()

    def attempt():
        if whoami(args.addr, args.port, args.timeout) == args.want:
            with lock:
                found.append(time.time())

    deadline = time.time() + args.within
    threads = []
    while time.time() < deadline:
        with lock:
            if found:
                break
        t = threading.Thread(target=attempt, daemon=True)
        t.start()
        threads.append(t)
        time.sleep(args.every)
    for t in threads:
        t.join(args.timeout + 1)
    if found:
        print(f"{min(found):.3f}")
        return 0
    print("timeout")
    return 1


def cmd_hold(args):
    """Open a connection and keep it: --talk sends a line every 100 ms and reads the echo,
    otherwise it waits in recv(). Prints 'seen ADDR port P' (the server saw ADDR; P is the local
    port, which --sport picks, e.g. to reuse a killed flow's), then how the connection ended with
    the wall-clock time: 'reset T' (ECONNRESET), 'closed T', 'error T ERRNO' or 'alive' at
    --within (with --talk followed by 'maxgap MS', the longest wait between two answers)."""
    source = (args.bind or "", args.sport) if args.bind or args.sport else None
    c = socket.socket(socket.AF_INET6 if ":" in args.addr else socket.AF_INET)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if source:
        c.bind(source)
    c.settimeout(2)
    c.connect((args.addr, args.port))
    return hold(c, args)


def hold(c, args):
    import errno
    f = c.makefile("rb")
    print("seen", f.readline().split()[1].decode(), "port", c.getsockname()[1], flush=True)
    c.settimeout(None)
    deadline = time.time() + args.within
    last, gap = time.time(), 0.0
    try:
        while time.time() < deadline:
            if args.talk:
                c.sendall(b"ping\n")
                c.settimeout(max(0.01, deadline - time.time()))
                if not c.recv(64):
                    print(f"closed {time.time():.3f}", flush=True)
                    return 1
                now = time.time()
                gap, last = max(gap, now - last), now
                time.sleep(0.1)
            else:
                c.settimeout(max(0.01, deadline - time.time()))
                if not c.recv(64):
                    print(f"closed {time.time():.3f}", flush=True)
                    return 1
    except socket.timeout:
        pass
    except OSError as e:
        what = "reset" if e.errno == errno.ECONNRESET else f"error {e.errno}"
        print(f"{what} {time.time():.3f}", flush=True)
        return 0
    print("alive", flush=True)
    if args.talk:
        # The longest wait between two answers (100 ms when nothing went wrong).
        print(f"maxgap {gap * 1000:.0f}", flush=True)
    return 1


def inet_checksum(data):
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xffff:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff


def midstream(args):
    """Send one mid-stream TCP segment (ACK, no SYN) from SRC to ADDR:PORT, as if a flow the
    receiver has no state for went on, and print 'rst' if a reset comes back within --wait
    seconds, else 'silent'."""
    import select, struct
    src, dst = socket.inet_aton(args.src), socket.inet_aton(args.addr)
    sport = 40000 + os.getpid() % 20000
    tcp = struct.pack("!HHIIBBHHH", sport, args.port, 1000, 2000, 5 << 4, 0x10, 65535, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + inet_checksum(pseudo + tcp).to_bytes(2, "big") + tcp[18:]
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    tx.bind((args.src, 0))
    tx.sendto(tcp, (args.addr, 0))
    deadline = time.time() + args.wait
    while time.time() < deadline:
        if not select.select([rx], [], [], max(0.0, deadline - time.time()))[0]:
            break
        p = rx.recv(2048)
        ihl = (p[0] & 0x0f) * 4
        if p[12:16] == dst and len(p) >= ihl + 14:
            dport, flags = struct.unpack("!H", p[ihl + 2:ihl + 4])[0], p[ihl + 13]
            if dport == sport and flags & 0x04:
                print("rst")
                return
    print("silent")


def pingcost(args):
    """Send ROUNDS rounds of ICMP echo requests to ADDRS through --iface (one request per
    address, then their replies, 5 ms apart) and print the system and user CPU time this
    process spent per probe: what the kernel charges a prober in this namespace."""
    import resource, struct
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode() + b"\0")
    s.settimeout(1)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(args.rounds):
        for a in args.addrs:
            icmp = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xffff, i & 0xffff) + b"uplinkd"
            icmp = icmp[:2] + inet_checksum(icmp).to_bytes(2, "big") + icmp[4:]
            s.sendto(icmp, (a, 0))
        got = 0
        while got < len(args.addrs):
            p = s.recv(2048)
            got += p[(p[0] & 0x0f) * 4] == 0
        time.sleep(0.005)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = args.rounds * len(args.addrs)
    print("per probe: system %.1f us, user %.1f us (%d probes)" % (
        (r1.ru_stime - r0.ru_stime) / n * 1e6, (r1.ru_utime - r0.ru_utime) / n * 1e6, n))


def echo(args):
    """Answer ICMP echo requests to ADDRS after --delay seconds, like targets far away on the
    internet (the namespace's kernel must not answer them: net.ipv4.icmp_echo_ignore_all=1;
    a raw socket still sees the requests). Prints 'ready' once listening; runs until killed."""
    import heapq, select
    addrs = {socket.inet_aton(a) for a in args.addrs}
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
    print("ready", flush=True)
    due = []
    while True:
        timeout = max(0.0, due[0][0] - time.time()) if due else None
        if select.select([rx], [], [], timeout)[0]:
            p = rx.recv(2048)
            ihl = (p[0] & 0x0f) * 4
            if len(p) >= ihl + 8 and p[ihl] == 8 and p[16:20] in addrs:
                icmp = bytearray(p[ihl:])
                icmp[0], icmp[2:4] = 0, b"\0\0"
                icmp[2:4] = inet_checksum(bytes(icmp)).to_bytes(2, "big")
                # The kernel fills in the IP checksum, id and length of a header-included packet.
                ip = bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0]) + p[16:20] + p[12:16]
                heapq.heappush(due, (time.time() + args.delay, ip + bytes(icmp)))
        while due and due[0][0] <= time.time():
            pkt = heapq.heappop(due)[1]
            tx.sendto(pkt, (socket.inet_ntoa(pkt[16:20]), 0))


def forge_errors(args):
    """For --within seconds: sniff the echo requests from --victim to --watch on --iface (and no
    others), and for each one send --victim ICMP host-unreachable errors quoting echo requests
    to every address in --targets with the sniffed identifier and sequence numbers around the
    sniffed one, plus --random errors quoting random identifiers and sequence numbers. The
    request to --watch itself is quoted whole, as a router would. Prints what it saw and sent."""
    import random, select
    victim, watch = socket.inet_aton(args.victim), socket.inet_aton(args.watch)
    targets = [socket.inet_aton(t) for t in args.targets.split(",")]
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    sniff.bind((args.iface, 0x0800))
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)

    def quote(dst, ident, seq, payload=b""):
        echo = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + payload
        echo = echo[:2] + inet_checksum(echo).to_bytes(2, "big") + echo[4:]
        ip = bytearray([0x45, 0, 0, 0, 0, 0, 0x40, 0, 63, 1, 0, 0]) + victim + dst
        ip[2:4] = (20 + len(echo)).to_bytes(2, "big")
        ip[4:6] = random.getrandbits(16).to_bytes(2, "big")
        ip[10:12] = inet_checksum(bytes(ip)).to_bytes(2, "big")
        return bytes(ip) + echo

    def send(quoted):
        err = bytes([3, 1, 0, 0, 0, 0, 0, 0]) + quoted
        err = err[:2] + inet_checksum(err).to_bytes(2, "big") + err[4:]
        tx.sendto(err, (args.victim, 0))

    seen = sent = 0
    deadline = time.time() + args.within
    while time.time() < deadline:
        if not select.select([sniff], [], [], max(0.0, deadline - time.time()))[0]:
            continue
        p = sniff.recv(2048)
        ihl = (p[0] & 0x0f) * 4
        if len(p) < ihl + 8 or p[9] != 1 or p[12:16] != victim or p[16:20] != watch or p[ihl] != 8:
            continue
        seen += 1
        ident, seq = int.from_bytes(p[ihl + 4:ihl + 6], "big"), int.from_bytes(p[ihl + 6:ihl + 8], "big")
        send(quote(watch, ident, seq, p[ihl + 8:]))
        sent += 1
        for dst in targets:
            for d in range(-args.spread, args.spread + 1):
                send(quote(dst, ident, (seq + d) & 0xffff))
                sent += 1
        for _ in range(args.random):
            send(quote(random.choice(targets), random.getrandbits(16), random.getrandbits(16)))
            sent += 1
    print("sniffed", seen, "sent", sent, flush=True)
    return 0 if seen else 1


def cmd_hostile(args):
    """A hostile control-socket client, for --within seconds: keeps --idle connections that
    send nothing, --slowloris ones that send a request a byte of padding at a time and never end
    it, --floods that send requests and never read a reply, and (first, then every half second)
    --watches watches that go away once answered, or after 0.2 s. A connection the daemon closes or refuses is
    opened again in the next half second (at most 100 opens per wanted connection). Prints 'ready' once every kind has
    been opened, and at the end 'opened N', 'refused N' (told "too many connections") and
    'dropped N'."""
    import selectors
    sel = selectors.DefaultSelector()
    deadline = time.time() + args.within
    counts = {"opened": 0, "refused": 0, "dropped": 0}
    budget = 100 * (args.idle + args.slowloris + args.floods + args.watches)
    flood = b'{"cmd":"status"}\n' * 256

    def connect(kind):
        if counts["opened"] >= budget:
            return
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(1)
        try:
            c.connect(args.socket)
        except OSError:
            c.close()
            return
        counts["opened"] += 1
        c.setblocking(False)
        try:
            if kind == "slowloris":
                c.send(b'{"cmd":')
            elif kind == "flood":
                c.send(flood)
        except OSError:
            pass
        # A flood never reads: it notices the end of its connection by a failed send.
        sel.register(c, selectors.EVENT_WRITE if kind == "flood" else selectors.EVENT_READ, kind)

    def watch_and_leave():
        if time.time() >= deadline:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.settimeout(0.2)
                c.connect(args.socket)
                counts["opened"] += 1
                c.sendall(b'{"cmd":"watch"}\n')
                # Goes away once watching (or refused, or not answered in time).
                if b"too many connections" in c.recv(512):
                    counts["refused"] += 1
        except OSError:
            pass

    for _ in range(args.watches):
        watch_and_leave()
    for kind, n in (("idle", args.idle), ("slowloris", args.slowloris), ("flood", args.floods)):
        for _ in range(n):
            connect(kind)
    print("ready", flush=True)
    next_round, again = time.time(), []
    while time.time() < deadline:
        for key, _ in sel.select(timeout=0.1):
            c, kind = key.fileobj, key.data
            try:
                if kind == "flood":
                    c.send(flood)
                    continue
                data = c.recv(512)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            counts["refused" if b"too many connections" in data else "dropped"] += 1
            sel.unregister(c)
            c.close()
            again.append(kind)
        if time.time() >= next_round:
            for kind in again:
                connect(kind)
            again.clear()
            # Slowloris: one more byte of padding each; the request line never ends.
            for key in list(sel.get_map().values()):
                if key.data == "slowloris":
                    try:
                        key.fileobj.send(b" ")
                    except OSError:
                        pass
            for _ in range(args.watches):
                watch_and_leave()
            next_round = time.time() + 0.5
    for name in ("opened", "refused", "dropped"):
        print(name, counts[name], flush=True)
    return 0


def cmd_silent(args):
    """A Unix socket server that accepts connections and never answers, for --within seconds."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(args.socket)
    s.listen(16)
    s.settimeout(0.1)
    held = []
    deadline = time.time() + args.within
    while time.time() < deadline:
        try:
            held.append(s.accept()[0])
        except socket.timeout:
            pass
    return 0


def ra(args):
    """Send one router advertisement (router lifetime --lifetime s, no prefix) on --iface to
    all nodes, from the interface's link-local address, as an ISP's router does."""
    import struct
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    # type 134, code 0, checksum (the kernel's), hop limit 64, no flags, lifetime, reachable
    # and retransmission timers unspecified.
    msg = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, args.lifetime, 0, 0)
    s.sendto(msg, ("ff02::1", 0, 0, socket.if_nametoindex(args.iface)))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("server"); a.add_argument("addr"); a.add_argument("port", type=int)
    a = sub.add_parser("http"); a.add_argument("addr"); a.add_argument("port", type=int)
    a.add_argument("--cert", help="serve HTTPS with this certificate (PEM)"); a.add_argument("--key")
    a.add_argument("--then-cert", help="the certificate to serve after SIGUSR1"); a.add_argument("--then-key")
    a = sub.add_parser("dns"); a.add_argument("addr"); a.add_argument("port", type=int)
    a = sub.add_parser("whoami"); a.add_argument("addr"); a.add_argument("port", type=int)
    a.add_argument("--timeout", type=float, default=1.0); a.add_argument("--bind")
    a = sub.add_parser("resolve"); a.add_argument("addr"); a.add_argument("port", type=int)
    a.add_argument("--name", default="whoami.example"); a.add_argument("--timeout", type=float, default=2.0)
    a = sub.add_parser("until"); a.add_argument("addr"); a.add_argument("port", type=int)
    a.add_argument("--want", required=True); a.add_argument("--every", type=float, default=0.01)
    a.add_argument("--timeout", type=float, default=1.0); a.add_argument("--within", type=float, default=10)
    a = sub.add_parser("count"); a.add_argument("addr"); a.add_argument("port", type=int)
    a.add_argument("--n", type=int, default=1000); a.add_argument("--timeout", type=float, default=2)
    a.add_argument("--bind")
    a = sub.add_parser("udpserver"); a.add_argument("addr"); a.add_argument("port", type=int)
    a = sub.add_parser("udp"); a.add_argument("addr"); a.add_argument("port", type=int)
    a.add_argument("--want", required=True); a.add_argument("--within", type=float, default=20)
    a = sub.add_parser("hold"); a.add_argument("addr"); a.add_argument("port", type=int)
    a.add_argument("--talk", action="store_true"); a.add_argument("--within", type=float, default=30)
    a.add_argument("--bind", help="local address to connect from")
    a.add_argument("--sport", type=int, default=0, help="local port to connect from")
    a = sub.add_parser("echo"); a.add_argument("addrs", nargs="+"); a.add_argument("--delay", type=float, default=0.03)
    a = sub.add_parser("pingcost"); a.add_argument("addrs", nargs="+"); a.add_argument("--iface", required=True)
    a.add_argument("--rounds", type=int, default=2000)
    a = sub.add_parser("midstream"); a.add_argument("addr"); a.add_argument("port", type=int)
    a.add_argument("--src", required=True); a.add_argument("--wait", type=float, default=1)
    a = sub.add_parser("forge-errors"); a.add_argument("--iface", required=True); a.add_argument("--victim", required=True)
    a.add_argument("--watch", required=True); a.add_argument("--targets", required=True)
    a.add_argument("--spread", type=int, default=3); a.add_argument("--random", type=int, default=8)
    a.add_argument("--within", type=float, default=10)
    a = sub.add_parser("hostile"); a.add_argument("socket"); a.add_argument("--within", type=float, default=10)
    for kind in ("idle", "slowloris", "floods", "watches"):
        a.add_argument(f"--{kind}", type=int, default=0)
    a = sub.add_parser("silent"); a.add_argument("socket"); a.add_argument("--within", type=float, default=10)
    a = sub.add_parser("ra"); a.add_argument("--iface", required=True); a.add_argument("--lifetime", type=int, default=1800)
    args = p.parse_args()
    if args.cmd == "server":
        server(args)
    elif args.cmd == "http":
        http(args)
    elif args.cmd == "dns":
        dns(args)
    elif args.cmd == "resolve":
        sys.exit(resolve(args))
    elif args.cmd == "whoami":
        sys.exit(cmd_whoami(args))
    elif args.cmd == "count":
        sys.exit(cmd_count(args))
    elif args.cmd == "pingcost":
        pingcost(args)
    elif args.cmd == "ra":
        ra(args)
    elif args.cmd == "midstream":
        midstream(args)
    elif args.cmd == "udpserver":
        udpserver(args)
    elif args.cmd == "udp":
        sys.exit(cmd_udp(args))
    elif args.cmd == "echo":
        echo(args)
    elif args.cmd == "forge-errors":
        sys.exit(forge_errors(args))
    elif args.cmd == "hold":
        sys.exit(cmd_hold(args))
    elif args.cmd == "hostile":
        sys.exit(cmd_hostile(args))
    elif args.cmd == "silent":
        sys.exit(cmd_silent(args))
    else:
        sys.exit(cmd_until(args))


if __name__ == "__main__":
    main()
