"""Python client of the langdaugd sampler daemon (see proto/langdaug.proto).

``Client`` connects to one or more samplers, keeps a window of ``credits``
batches granted on each (every batch taken is replaced by a new credit on the
sampler it came from, so a faster sampler serves more) and yields ``Batch``
objects whose ``images`` and ``masks`` are NumPy views over the received
ZeroMQ frames (no copy).

Samplers may die and come back. Each endpoint follows the same state machine
as the C library (client/ld_client.h):

    state    | event                                   | action                         | next
    ---------+-----------------------------------------+--------------------------------+---------
    down     | ZMTP handshake done (socket monitor)    | send Hello                     | hello
    hello    | HelloReply                              | PullRequest(window)            | live
    live     | Batch                                   | hand out, top the window up    | live
    live     | nothing sent for 0.8 * idle_timeout     | reconnect (fresh session)      | down
    hello,   | Error INVALID_REQUEST, UNKNOWN_DOMAIN,  | RequestRejected raised once;   | rejected
    live     |   LIMIT, UNSUPPORTED_VERSION, ...       |   no more credits              |
    live     | Error UNAVAILABLE (daemon draining)     | no more credits                | draining
    any      | connection lost                         | outstanding credits forgotten  | down

A reconnection is a new daemon session (new routing id), so nothing of the
old session arrives afterwards. With a ``seed``, session k of endpoint e asks
for ``session_seed(seed, e, k)``: exactly ``seed`` for endpoint 0's first
session, distinct mixed seeds otherwise (same function as the C library), so
two samplers or a restarted one never replay the same chains. A chain is
identified by ``(meta["seed"], meta["chain_id"])``.

Sampler fleets, as in the C library: an endpoint ``tcp://NAME:PORT`` is one sampler per IPv4 address the
name resolves to (a Kubernetes headless Service, round-robin DNS), ``file:///PATH`` one per ``HOST:PORT``
(or ``tcp://HOST:PORT``) line of a hosts file ('#' comments; a Slurm job writes its node list there), each
HOST resolved likewise; an IP address or any other endpoint is one sampler. Names and files are resolved
again every ``resolve_interval`` seconds from ``next()``: new samplers are connected with the next
never-reused id (in sorted address order), ones no longer listed are said Bye and dropped, and a
resolution that fails changes nothing (logged once, retried every second, named in the TimeoutError).
``Batch.endpoint`` and the session seeds are per sampler id.

A Client is used by one thread at a time; it has no thread of its own, so
heartbeats are sent while the caller waits in ``next()``, at least three per
idle timeout of the daemon (HelloReply.idle_timeout, which may be below a
second, or the whole seconds of idle_timeout_s from daemons that do not send it).
"""

import logging
import socket
import time

import numpy as np
import zmq
import zmq.utils.z85
from zmq.utils.monitor import recv_monitor_message

try:
    from . import langdaug_pb2 as pb
except ImportError as exc:  # pragma: no cover - a build step is missing
    raise ImportError("langdaug_pb2 is missing: run `make` to generate it from proto/langdaug.proto") from exc

PROTOCOL_VERSION = 1
_log = logging.getLogger("langdaug")
_MASK64 = (1 << 64) - 1

KEEPS = {"none": pb.KEEP_NONE, "luminance": pb.KEEP_LUMINANCE}
ENCODINGS = {
    "float32": (pb.ENCODING_FLOAT32, np.dtype("<f4")),
    "float16": (pb.ENCODING_FLOAT16, np.dtype("<f2")),
    "uint8": (pb.ENCODING_UINT8, np.dtype("u1")),
}
_REJECTIONS = {
    pb.ERROR_UNSUPPORTED_VERSION, pb.ERROR_INVALID_REQUEST, pb.ERROR_UNKNOWN_DOMAIN, pb.ERROR_LIMIT,
    pb.ERROR_MALFORMED, pb.ERROR_TOO_LARGE, pb.ERROR_UNSPECIFIED,
}


_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL |
                     zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def read_key_file(path):
    """The Z85 key (bytes) of a CURVE key file written by `langdaug keygen` (format in
    common/ld_curvekey.h: one 40-character key on a line; blank and '#' lines ignored)."""
    with open(path, "rb") as f:
        lines = [line.strip() for line in f.read(4097).splitlines()]
    keys = [line for line in lines if line and not line.startswith(b"#")]
    if len(keys) != 1 or len(keys[0]) != 40:
        raise ValueError("%s: not a CURVE key file (one 40-character Z85 key expected)" % path)
    return keys[0]


def _curve_keys(server, secret, public):
    """(server, secret, public) Z85 bytes, or None without CURVE; checks what it is given."""
    if server is None and secret is None and public is None:
        return None
    if server is None or secret is None:
        raise ValueError("CURVE needs the server's public key and the client's secret key")
    keys = []
    for what, key in (("curve_server_key", server), ("curve_secret_key", secret), ("curve_public_key", public)):
        if key is None:
            keys.append(None)
            continue
        key = key.encode() if isinstance(key, str) else bytes(key)
        try:
            ok = len(key) == 40 and len(zmq.utils.z85.decode(key)) == 32
        except (ValueError, KeyError, IndexError):
            ok = False
        if not ok:
            raise ValueError("%s: not a 40-character Z85 CURVE key" % what)
        keys.append(key)
    if not zmq.has("curve"):
        raise ValueError("CURVE keys given, but libzmq was built without CURVE")
    if keys[2] is None:
        keys[2] = zmq.curve_public(keys[1])
    return tuple(keys)


class LangDAugError(Exception):
    """Base class of the client's errors."""


class ProtocolError(LangDAugError):
    """A sampler sent something that does not follow the protocol (it is dropped)."""


class RequestRejected(LangDAugError):
    """A sampler refused the request; ``code`` is the ErrorCode name, e.g. 'ERROR_UNKNOWN_DOMAIN'."""

    def __init__(self, endpoint, code, text):
        super().__init__("%s: sampler refused the request: %s: %s" % (endpoint, code, text))
        self.endpoint, self.code, self.text = endpoint, code, text


def _mix64(x):
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def session_seed(seed, endpoint, session):
    """Seed of session ``session`` (0-based) of endpoint ``endpoint``; as ld_client_session_seed()."""
    if endpoint == 0 and session == 0:
        return seed & _MASK64
    return _mix64((seed + _mix64(((endpoint << 40) ^ session ^ 0x6C64636C69656E74) & _MASK64)) & _MASK64)


def parse_pairs(pairs):
    """Normalises pairs given as "A:B[:w]" strings, (source, target[, weight]) tuples or dicts.

    An empty source means any dataset domain other than the target."""
    out = []
    for p in pairs or ():
        if isinstance(p, str):
            parts = p.split(":")
            if len(parts) not in (2, 3) or not parts[1]:
                raise ValueError("pair %r is not SOURCE:TARGET[:WEIGHT]" % p)
            p = parts
        elif isinstance(p, dict):
            p = (p.get("source", ""), p["target"], p.get("weight", 1.0))
        source, target = p[0] or "", p[1]
        weight = float(p[2]) if len(p) > 2 else 1.0
        if not target:
            raise ValueError("pair %r has no target" % (p,))
        if not (weight > 0 and np.isfinite(weight)):
            raise ValueError("pair %r: weight must be a finite number > 0" % (p,))
        out.append((source, target, weight))
    return out


_MAX_IDLE_TIMEOUT = 1e7  # seconds; beyond any daemon's setting (same bound as the C library)
_MAX_SAMPLERS = 256  # as the C library
_RESOLVE_RETRY = 1.0  # seconds between retries of a name or file that gave no sampler
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def _parse_hostport(what, text):
    """(host, port, literal) of "HOST:PORT" or "[IPV6]:PORT"; literal says whether host is an IP address."""
    v6 = text.startswith("[")
    end = text.find("]") if v6 else text.rfind(":")
    if end < 0 or (v6 and text[end + 1:end + 2] != ":"):
        raise ValueError("%s: %r is not %s:PORT" % (what, text, "[IPV6]" if v6 else "HOST"))
    host, port = text[int(v6):end], text[end + 1 + int(v6):]
    if not host:
        raise ValueError("%s: %r: the host is empty" % (what, text))
    if not (port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise ValueError("%s: port %r is not a number in 1..65535" % (what, port))
    try:
        socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, host)
        literal = True
    except OSError:
        literal = False
    if v6 and not literal:
        raise ValueError("%s: %r is not an IPv6 address" % (what, host))
    if not literal and not set(host) <= _HOST_CHARS:
        raise ValueError("%s: %r is not a host name or IP address" % (what, host))
    return host, int(port), literal


def resolve_ipv4(host, port):
    """The default resolver: [(address, port)] of the IPv4 addresses getaddrinfo() gives (as ZeroMQ)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LookupError("name %r: %s" % (host, exc.strerror)) from None
    return [(info[4][0], port) for info in infos]


class _Source:
    """An endpoint as given: one fixed sampler, a name (target = host) or a hosts file (target = path)."""

    def __init__(self, spec):
        self.spec, self.kind, self.target, self.port = spec, "fixed", None, 0
        self.next_resolve, self.problem = float("inf"), ""
        what = "endpoint %r" % spec
        if spec.startswith("file://"):
            if not spec.startswith("file:///"):
                raise ValueError("%s: a hosts file needs an absolute path (file:///path/hosts)" % what)
            self.kind, self.target = "file", spec[len("file://"):]
        elif spec.startswith("tcp://") and ";" not in spec:
            host, self.port, literal = _parse_hostport(what, spec[len("tcp://"):])
            if not literal:
                self.kind, self.target = "name", host


def _zmq_endpoint(host, port):
    return ("tcp://[%s]:%d" if ":" in host else "tcp://%s:%d") % (host, port)


def _idle_timeout(reply):
    """The daemon's idle timeout in seconds from a HelloReply, 0 if it did not say: the precise
    ``idle_timeout`` when present and sane, else the whole seconds of older daemons (rounded up, so
    heartbeats planned from them can be too slow for a timeout below a second)."""
    if reply.HasField("idle_timeout") and 0 < reply.idle_timeout <= _MAX_IDLE_TIMEOUT:
        return reply.idle_timeout
    return float(reply.idle_timeout_s)


def _meta_dict(m):
    return {
        "source_domain": m.source_domain, "target_domain": m.target_domain, "step": m.step,
        "energy": m.energy, "chain_id": m.chain_id, "seed": m.seed, "source_file": m.source_file,
        "crop_x": m.crop_x, "crop_y": m.crop_y, "model_hash": m.model_hash,
        "source_item": m.source_item, "epoch": m.epoch,
    }


class Batch:
    """One batch: ``images`` [N,C,S,S] (float32 in [-1,1], float16, or uint8 = round((v+1)*127.5)),
    ``masks`` [N,S,S] uint8 class ids, ``meta`` a list of N dicts. The arrays are read-only views
    over the received frames; ``np.array(batch.images)`` makes a writable copy."""

    __slots__ = ("images", "masks", "meta", "endpoint", "sequence", "encoding", "mask_classes", "credits_left")

    def __init__(self, images, masks, meta, endpoint, sequence, encoding, mask_classes, credits_left):
        self.images, self.masks, self.meta = images, masks, meta
        self.endpoint, self.sequence, self.encoding = endpoint, sequence, encoding
        self.mask_classes, self.credits_left = mask_classes, credits_left

    def __len__(self):
        return len(self.meta)

    def images_float(self):
        """The images as a new float32 array in [-1, 1], whatever the encoding."""
        if self.encoding == "uint8":
            return self.images.astype(np.float32) / np.float32(127.5) - np.float32(1)
        return self.images.astype(np.float32)


class _Endpoint:
    def __init__(self, ident, addr, source):
        self.id, self.addr, self.source = ident, addr, source
        self.sock = self.mon = None
        self.state = "down"
        self.window = self.outstanding = 0
        self.need_hello = self.spec_sent = False
        self.last_send = 0.0
        self.idle_timeout = 60.0
        self.sessions = self.batches = self.samples = self.bytes = self.errors = 0
        self.rejection = None
        self.handshake_error = ""


class Client:
    """Iterator of ``Batch`` objects from one or more langdaugd samplers.

    endpoints   "tcp://host:5555", "file:///path/hosts", a comma-separated string of them, or a list
    batch_size  samples per batch
    targets     target domains (each = the pair "any source -> target")
    pairs       weighted (source, target[, weight]) pairs, see parse_pairs(); with neither targets nor
                pairs, every (source, target) pair the sampler serves, uniformly
    steps       Langevin snapshot steps, ascending (None = the daemon's default)
    dtype       wire encoding: "float32", "float16" or "uint8"
    seed        makes each sampler's stream reproducible (None = random daemon seeds)
    epoch       each source crop once per epoch before repeats
    keep        "none", or "luminance": every snapshot but step 0 keeps the source crop's CIE L* and only
                its colour (a*, b*) comes from the chain (None = the daemon's `keep` setting)
    credits     batches kept granted on each sampler
    timeout     seconds next() waits before raising TimeoutError (None = forever)
    heartbeat   seconds between client heartbeats while waiting
    dead        seconds of silence after which a connection counts as lost (ZMTP heartbeat)
    curve_server_key, curve_secret_key[, curve_public_key]
                CURVE encryption and authentication (langdaugd's curve_* settings): 40-character
                Z85 keys (str or bytes), e.g. read with read_key_file(); the public key is derived
                from the secret one when not given. A sampler that refuses them stays "down" and
                the reason is logged and named in the TimeoutError.
    resolve_interval
                seconds between resolutions of names and hosts files (0 = only now, where one that
                gives no sampler raises LangDAugError)
    resolver    callable(host, port) -> [(address, port), ...] for a name (never an IP address);
                raising means "cannot say now" (the samplers already known stay). Default:
                resolve_ipv4 (getaddrinfo). Called from the constructor and next().
    """

    def __init__(self, endpoints, batch_size, targets=(), pairs=(), steps=None, dtype="float32", seed=None,
                 epoch=False, credits=4, timeout=30.0, heartbeat=1.0, dead=3.0, name="langdaug-python",
                 context=None, curve_server_key=None, curve_secret_key=None, curve_public_key=None, keep=None,
                 resolve_interval=30.0, resolver=None):
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        endpoints = list(endpoints)
        if not endpoints:
            raise ValueError("endpoints: need at least one")
        if isinstance(targets, str):
            targets = [targets]
        targets = list(targets or ())
        pairs = parse_pairs(pairs)
        if any(not t for t in targets):
            raise ValueError("targets: empty domain name")
        if int(batch_size) < 1:
            raise ValueError("batch_size must be >= 1")
        if not 1 <= int(credits) <= 4096:
            raise ValueError("credits must be in 1..4096")
        self.dtype = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        if self.dtype not in ENCODINGS:
            raise ValueError("dtype %r is not float32, float16 or uint8" % (dtype,))
        self._encoding, self._np_dtype = ENCODINGS[self.dtype]
        steps = [int(s) for s in (steps or ())]
        if any(b <= a for a, b in zip(steps, steps[1:])) or any(s < 0 for s in steps):
            raise ValueError("steps must be non-negative and strictly ascending: %r" % (steps,))
        self.batch_size, self.seed, self.credits = int(batch_size), seed, int(credits)
        self.timeout, self.heartbeat = timeout, float(heartbeat)
        if keep is not None and keep not in KEEPS:
            raise ValueError("keep %r is not None, 'none' or 'luminance'" % (keep,))
        self._request = pb.PullRequest(batch_size=self.batch_size, targets=targets, steps=steps,
                                       encoding=self._encoding, epoch=bool(epoch))
        if keep is not None:
            self._request.keep = KEEPS[keep]
        for source, target, weight in pairs:
            self._request.pairs.add(source=source, target=target, weight=weight)
        self._curve = _curve_keys(curve_server_key, curve_secret_key, curve_public_key)
        if float(resolve_interval) < 0:
            raise ValueError("resolve_interval must be >= 0")
        self._resolve_interval, self._resolver = float(resolve_interval), resolver or resolve_ipv4
        self._sources = [_Source(e) for e in endpoints]
        self._eps, self._next_id = [], 0
        self._name = name
        self._closed = False
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._rr = 0
        self._last_heartbeat = time.monotonic()
        self._dead = float(dead)
        try:
            for src in self._sources:
                self._refresh(src, time.monotonic())
                if self._resolve_interval == 0 and src.problem:
                    raise LangDAugError("%s: %s" % (src.spec, src.problem))
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------- sockets

    def _open(self, ep):
        ep.sock = self._ctx.socket(zmq.DEALER)
        for opt, value in ((zmq.LINGER, 0), (zmq.IMMEDIATE, 1), (zmq.IPV6, int("://[" in ep.addr)),
                           (zmq.RECONNECT_IVL, 100), (zmq.RECONNECT_IVL_MAX, 2000),
                           (zmq.HEARTBEAT_IVL, int(self.heartbeat * 1000)),
                           (zmq.HEARTBEAT_TIMEOUT, int(self._dead * 1000))):
            ep.sock.setsockopt(opt, value)
        if self._curve:
            ep.sock.curve_serverkey, ep.sock.curve_secretkey, ep.sock.curve_publickey = self._curve
        ep.mon = ep.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED |
                                            _HANDSHAKE_FAILED)
        ep.mon.setsockopt(zmq.LINGER, 0)
        try:
            ep.sock.connect(ep.addr)
        except zmq.ZMQError as exc:
            raise ValueError("endpoint %r: %s" % (ep.addr, exc)) from None

    def _close_endpoint(self, ep):
        """Says Bye to a sampler in a session and closes its sockets."""
        if ep.sock is None:
            return
        if ep.state in ("live", "hello"):
            ep.sock.setsockopt(zmq.LINGER, 200)
            self._send(ep, bye=pb.Bye())
        ep.sock.disable_monitor()
        ep.mon.close()
        ep.sock.close()
        ep.sock = ep.mon = None

    # ------------------------------------------------------------- fleets

    def _resolve_host(self, host, port, literal):
        if literal:
            return [_zmq_endpoint(host, port)]
        found = []
        for addr, p in self._resolver(host, port):
            if not addr or not 1 <= int(p) <= 65535:
                raise ValueError("name %r: the resolver's address %r has no host or port" % (host, (addr, p)))
            found.append(_zmq_endpoint(str(addr), int(p)))
        return found

    def _read_hosts(self, path):
        found = []
        with open(path) as f:
            for no, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                what = "%s:%d" % (path, no)
                host, port, literal = _parse_hostport(what, line[6:] if line.startswith("tcp://") else line)
                try:
                    found += self._resolve_host(host, port, literal)
                except Exception as exc:  # the resolver's: say where
                    raise LookupError("%s: %s" % (what, exc)) from None
        return found

    def _list(self, src):
        """The ZeroMQ endpoints a source stands for now, sorted, distinct, at most _MAX_SAMPLERS."""
        if src.kind == "name":
            found = self._resolve_host(src.target, src.port, False)
        elif src.kind == "file":
            found = self._read_hosts(src.target)
        else:
            found = [src.spec]
        return sorted(set(found))[:_MAX_SAMPLERS]

    def _refresh(self, src, now):
        """Resolves a source again and brings its samplers in line; a failure changes nothing."""
        try:
            found = self._list(src)
        except Exception as exc:  # the resolver's, or reading the file: keep what we have
            self._set_problem(src, str(exc))
        else:
            self._sync(src, found)
            self._set_problem(src, "" if found else "lists no sampler")
        period = min(self._resolve_interval, _RESOLVE_RETRY) if src.problem else self._resolve_interval
        src.next_resolve = now + period if src.kind != "fixed" and self._resolve_interval > 0 else float("inf")

    def _set_problem(self, src, why):
        if why and why != src.problem and self._resolve_interval > 0:
            kept = sum(ep.source is src for ep in self._eps)
            _log.warning("%s: %s; %d of its samplers kept, retrying", src.spec, why, kept)
        src.problem = why

    def _sync(self, src, found):
        for ep in [ep for ep in self._eps if ep.source is src and ep.addr not in found]:
            _log.info("%s: sampler %s is no longer listed; dropped", src.spec, ep.addr)
            self._close_endpoint(ep)
            self._eps.remove(ep)
        have = {ep.addr for ep in self._eps if ep.source is src}
        for addr in found:
            if addr in have:
                continue
            if len(self._eps) >= _MAX_SAMPLERS:
                _log.warning("%s: sampler %s left out: the client has %d already", src.spec, addr, _MAX_SAMPLERS)
                continue
            ep = _Endpoint(self._next_id, addr, src)
            self._next_id += 1
            self._eps.append(ep)
            self._open(ep)
            if src.kind != "fixed":
                _log.info("%s: sampler %s joined (id %d)", src.spec, addr, ep.id)
        self._rr = self._rr % len(self._eps) if self._eps else 0

    def _send(self, ep, **body):
        msg = pb.ClientMessage(version=PROTOCOL_VERSION, **body)
        try:
            ep.sock.send(msg.SerializeToString(), zmq.DONTWAIT)
        except zmq.Again:
            return False
        ep.last_send = time.monotonic()
        return True

    def _set_down(self, ep, why):
        if ep.state != "down":
            _log.warning("%s: %s; going on with the other samplers", ep.addr, why)
        ep.state, ep.outstanding, ep.need_hello = "down", 0, False

    def _read_monitor(self, ep):
        while True:
            try:
                event = recv_monitor_message(ep.mon, zmq.DONTWAIT)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self._set_down(ep, "connection lost")
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                ep.state, ep.outstanding, ep.window, ep.need_hello, ep.spec_sent = "hello", 0, 0, True, False
                ep.sessions += 1
                ep.handshake_error = ""
            elif event["event"] & _HANDSHAKE_FAILED:
                self._handshake_failed(ep, event["event"], event["value"])

    def _handshake_failed(self, ep, event, value):
        """Records (and logs once) why a sampler refused the connection; ZeroMQ retries by itself."""
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            why = "the sampler refused our CURVE key (status %d)" % value
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            why = "security handshake failed (ZMTP error 0x%x: CURVE keys or CURVE on one side only?)" % value
        else:
            why = "security handshake failed (%s)" % zmq.strerror(value)
        if why != ep.handshake_error:
            _log.warning("%s: %s", ep.addr, why)
        ep.handshake_error = why

    def _top_up(self, ep):
        if ep.state != "live" or ep.outstanding >= ep.window:
            return
        # the session's first PullRequest says what to sample; later ones only add credits,
        # so the daemon never mistakes them for a new request
        req = pb.PullRequest()
        if not ep.spec_sent:
            req.CopyFrom(self._request)
            if self.seed is not None:
                req.seed = session_seed(int(self.seed), ep.id, ep.sessions - 1)
        req.credits = ep.window - ep.outstanding
        if self._send(ep, pull=req):
            ep.outstanding, ep.spec_sent = ep.window, True

    def _maintain(self, now):
        beat = now - self._last_heartbeat >= self.heartbeat
        if beat:
            self._last_heartbeat = now
        for ep in self._eps:
            if ep.state == "live" and now - ep.last_send > 0.8 * ep.idle_timeout:
                self._set_down(ep, "idle for longer than the daemon keeps a session")
                ep.sock.disconnect(ep.addr)
                ep.sock.connect(ep.addr)
            elif ep.state == "hello" and ep.need_hello:
                hello = pb.Hello(min_version=PROTOCOL_VERSION, max_version=PROTOCOL_VERSION,
                                 client_name=self._name)
                ep.need_hello = not self._send(ep, hello=hello)
            elif ep.state == "live":
                self._top_up(ep)
            if beat and ep.state in ("live", "hello"):
                self._send(ep, heartbeat=pb.Heartbeat(time_ms=int(now * 1000)))

    # ------------------------------------------------------------- receiving

    def _protocol_error(self, ep, text):
        ep.errors += 1
        return ProtocolError("%s: %s" % (ep.addr, text))

    def _on_hello(self, ep, reply):
        if ep.state != "hello":
            return
        if reply.HasField("version") and reply.version != PROTOCOL_VERSION:
            ep.errors += 1
            ep.state = "rejected"
            ep.rejection = RequestRejected(ep.addr, "ERROR_UNSUPPORTED_VERSION",
                                           "sampler chose protocol version %d" % reply.version)
            raise ep.rejection
        ep.window = self.credits
        if reply.max_credits > 0:
            ep.window = min(ep.window, reply.max_credits)
        idle = _idle_timeout(reply)
        if idle > 0:
            ep.idle_timeout = idle
            self.heartbeat = min(self.heartbeat, max(idle / 3, 0.01))
        ep.state = "live"
        self._top_up(ep)

    def _on_error(self, ep, err):
        ep.errors += 1
        name = pb.ErrorCode.Name(err.code) if err.code in pb.ErrorCode.values() else str(err.code)
        if err.code == pb.ERROR_UNAVAILABLE:
            ep.state, ep.outstanding = "draining", 0
        elif err.code == pb.ERROR_INTERNAL:
            _log.warning("%s: sampler dropped samples: %s", ep.addr, err.text)  # the credit stays granted
        else:
            ep.state, ep.outstanding = "rejected", 0
            ep.rejection = RequestRejected(ep.addr, name, err.text)
            raise ep.rejection

    def _make_batch(self, ep, frames, b):
        ep.outstanding = max(ep.outstanding - 1, 0)
        if len(frames) != 3:
            raise self._protocol_error(ep, "batch message with %d frames, expected 3" % len(frames))
        n, c, s = b.n, b.channels, b.size
        if n < 1 or c < 1 or s < 1:
            raise self._protocol_error(ep, "batch without n, channels or size")
        if b.encoding != self._encoding:
            raise self._protocol_error(ep, "batch encoding %d, asked for %d" % (b.encoding, self._encoding))
        if len(b.samples) != n:
            raise self._protocol_error(ep, "batch of %d samples has %d metadata entries" % (n, len(b.samples)))
        img_len, mask_len = len(frames[1].buffer), len(frames[2].buffer)
        need = n * c * s * s * self._np_dtype.itemsize
        if img_len != need or (b.HasField("images_bytes") and b.images_bytes != img_len):
            raise self._protocol_error(ep, "images frame has %d bytes, shape %dx%dx%dx%d %s needs %d"
                                       % (img_len, n, c, s, s, self.dtype, need))
        if mask_len != n * s * s or (b.HasField("masks_bytes") and b.masks_bytes != mask_len):
            raise self._protocol_error(ep, "masks frame has %d bytes, needs %d" % (mask_len, n * s * s))
        images = np.frombuffer(frames[1].buffer, dtype=self._np_dtype).reshape(n, c, s, s)
        masks = np.frombuffer(frames[2].buffer, dtype=np.uint8).reshape(n, s, s)
        if b.mask_classes > 0 and masks.size and int(masks.max()) >= b.mask_classes:
            raise self._protocol_error(ep, "mask value %d, but %d classes" % (int(masks.max()), b.mask_classes))
        ep.batches += 1
        ep.samples += n
        ep.bytes += len(frames[0].buffer) + img_len + mask_len
        return Batch(images, masks, [_meta_dict(m) for m in b.samples], ep.id, b.sequence, self.dtype,
                     b.mask_classes, b.credits_left)

    def _receive_one(self, ep):
        """Takes messages off one endpoint until a Batch (returned) or none is left (None)."""
        while True:
            try:
                frames = ep.sock.recv_multipart(zmq.DONTWAIT, copy=False)
            except zmq.Again:
                return None
            msg = pb.ServerMessage()
            try:
                msg.ParseFromString(frames[0].bytes)
            except Exception:
                raise self._protocol_error(ep, "a message of %d bytes does not decode" % len(frames[0].bytes))
            if msg.HasField("version") and msg.version != PROTOCOL_VERSION:
                raise self._protocol_error(ep, "message of protocol version %d" % msg.version)
            kind = msg.WhichOneof("body")
            if kind == "batch":
                return self._make_batch(ep, frames, msg.batch)
            if len(frames) != 1:
                raise self._protocol_error(ep, "extra frames after a %s message" % kind)
            if kind == "hello":
                self._on_hello(ep, msg.hello)
            elif kind == "error":
                self._on_error(ep, msg.error)
            elif kind != "heartbeat":
                raise self._protocol_error(ep, "message without a body")

    # ------------------------------------------------------------- public

    def next(self, timeout=None):
        """The next batch from any sampler (round-robin among those with one waiting).

        Raises TimeoutError after ``timeout`` (default: the client's) seconds without one,
        RequestRejected when a sampler refuses the request (that sampler then gets no more
        credits until it reconnects; raised again at once when every sampler refused),
        ProtocolError for a malformed message (dropped). The client stays usable after any."""
        if self._closed:
            raise LangDAugError("the client is closed")
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for src in self._sources:
                if time.monotonic() >= src.next_resolve:
                    self._refresh(src, time.monotonic())
            for ep in self._eps:
                self._read_monitor(ep)
            self._maintain(time.monotonic())
            for k in range(len(self._eps)):
                i = (self._rr + k) % len(self._eps)
                batch = self._receive_one(self._eps[i])
                if batch is not None:
                    self._rr = (i + 1) % len(self._eps)
                    self._top_up(self._eps[i])
                    return batch
            if self._eps and all(ep.state == "rejected" for ep in self._eps):
                raise self._eps[0].rejection
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise self._timeout_error(timeout)
            self._poll(now, deadline)

    def _timeout_error(self, timeout):
        """Each sampler's state, then each name or file that gives none and why."""
        states = ", ".join("%s %s (%d credits out%s)" % (ep.addr, ep.state, ep.outstanding,
                                                         "; " + ep.handshake_error if ep.handshake_error else "")
                           for ep in self._eps) or "no sampler"
        problems = "".join("; %s: %s" % (src.spec, src.problem) for src in self._sources if src.problem)
        return TimeoutError("no batch within %.1f s: %s%s" % (timeout, states, problems))

    def _poll(self, now, deadline):
        """Sleeps until a message, the deadline, the next heartbeat or resolution, or a short retry
        while a send is waiting for a connection."""
        wait = min([self._last_heartbeat + self.heartbeat] + [src.next_resolve for src in self._sources]) - now
        if deadline is not None:
            wait = min(wait, deadline - now)
        if any((ep.state == "hello" and ep.need_hello) or (ep.state == "live" and ep.outstanding < ep.window)
               for ep in self._eps):
            wait = min(wait, 0.05)
        poller = zmq.Poller()
        for ep in self._eps:
            poller.register(ep.sock, zmq.POLLIN)
            poller.register(ep.mon, zmq.POLLIN)
        if self._eps:
            poller.poll(max(int(wait * 1000), 0))
        else:
            time.sleep(max(wait, 0))

    __next__ = next

    def __iter__(self):
        return self

    def stats(self):
        """Per-sampler counters: id, endpoint (ZeroMQ), source (the endpoint given), state, outstanding,
        window, batches, samples, bytes, sessions, errors."""
        return [{"id": ep.id, "endpoint": ep.addr, "source": ep.source.spec, "state": ep.state, "outstanding": ep.outstanding, "window": ep.window,
                 "batches": ep.batches, "samples": ep.samples, "bytes": ep.bytes, "sessions": ep.sessions,
                 "errors": ep.errors} for ep in self._eps]

    def close(self):
        """Says Bye to live samplers and closes the sockets (batches already taken stay valid)."""
        self._closed = True
        for ep in self._eps:
            self._close_endpoint(ep)
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def status(endpoint, timeout=5.0, context=None, curve_server_key=None, curve_secret_key=None,
           curve_public_key=None):
    """Asks a daemon's status socket (REP) for its StatusReply (a protobuf message).

    Raises TimeoutError when no reply comes within ``timeout`` seconds and LangDAugError when
    the daemon answers with an error. CURVE keys as for Client."""
    curve = _curve_keys(curve_server_key, curve_secret_key, curve_public_key)
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    if curve:
        sock.curve_serverkey, sock.curve_secretkey, sock.curve_publickey = curve
    try:
        sock.connect(endpoint)
        sock.send(pb.StatusRequest(version=PROTOCOL_VERSION).SerializeToString())
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError("%s: no status reply within %.1f s" % (endpoint, timeout))
        reply = pb.StatusReply()
        reply.ParseFromString(sock.recv())
    finally:
        sock.close()
    if reply.HasField("error"):
        raise LangDAugError("%s: %s: %s" % (endpoint, pb.ErrorCode.Name(reply.error.code), reply.error.text))
    return reply
