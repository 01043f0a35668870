"""Bridge networking through the CNI plugins (Debian containernetworking-plugins): socirun's own bridge and
subnet (config `[network] bridge = "...", subnet = "..."`), a network namespace per container under
/run/netns, `loopback` + the `bridge`/`host-local`/`portmap`/`firewall` chain, and DEL + netns removal on exit.

The conflist is built by a pure function; the plugins are called as the CNI spec says: env CNI_COMMAND etc.,
the network config on stdin, the result JSON on stdout, each plugin getting the previous one's result.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from socirun.errors import SocirunError
from socirun.runtime.options import PortMapping

CNI_VERSION = "1.0.0"
DEFAULT_BRIDGE = "socirun0"
DEFAULT_SUBNET = "10.213.0.0/24"
DEFAULT_NETWORK_NAME = "socirun"
PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni")
NETNS_DIR = "/run/netns"
PLUGIN_TIMEOUT_S = 30


class NetworkError(SocirunError):
    """CNI could not set up or tear down a container's network (exit 125)."""


@dataclass(frozen=True)
class BridgeNetwork:
    name: str = DEFAULT_NETWORK_NAME
    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> BridgeNetwork:
        """The `[network]` table of socirun's config (unknown keys ignored; values checked)."""
        table = raw.get("network") or {}
        net = cls(
            name=str(table.get("name", DEFAULT_NETWORK_NAME)),
            bridge=str(table.get("bridge", DEFAULT_BRIDGE)),
            subnet=str(table.get("subnet", DEFAULT_SUBNET)),
        )
        try:
            ipaddress.ip_network(net.subnet)
        except ValueError:
            raise NetworkError(f'[network] subnet "{net.subnet}" in the socirun config is not a network') from None
        if not 0 < len(net.bridge) <= 15:
            raise NetworkError(f'[network] bridge "{net.bridge}" must be 1 to 15 characters (a Linux interface name)')
        return net


def conflist(net: BridgeNetwork, ipam_dir: str) -> dict[str, Any]:
    """nerdctl's default bridge chain with socirun's bridge, subnet and IPAM directory."""
    gateway = str(next(ipaddress.ip_network(net.subnet).hosts()))
    return {
        "cniVersion": CNI_VERSION,
        "name": net.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.subnet, "gateway": gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall"},
        ],
    }


def port_mappings(ports: Sequence[PortMapping]) -> list[dict[str, Any]]:
    """CNI portMappings runtime config (and nerdctl's network-config.json content)."""
    return [
        {"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol, "hostIP": p.host_ip}
        for p in ports
    ]


def find_plugin_dir(dirs: Sequence[str] = PLUGIN_DIRS) -> str:
    env = os.environ.get("CNI_PATH")
    for d in ([env] if env else []) + list(dirs):
        if os.path.isfile(os.path.join(d, "bridge")):
            return d
    raise NetworkError(
        "the CNI plugins are not installed (looked for bridge in " + ", ".join(dirs) + "); install "
        "containernetworking-plugins, or use --network host or none"
    )


def netns_name(container_id: str) -> str:
    return f"socirun-{container_id[:16]}"


def create_netns(name: str) -> str:
    _ip("netns", "add", name)
    return os.path.join(NETNS_DIR, name)


def delete_netns(name: str) -> None:
    if os.path.exists(os.path.join(NETNS_DIR, name)):
        _ip("netns", "delete", name)


def ipv4_of(result: Any) -> str:
    """The container's IPv4 address in a CNI result (ADD's, or the one cached for DEL), "" when it has none."""
    for ip in (result or {}).get("ips") or []:
        address = str(ip.get("address", ""))
        if address and ":" not in address:
            return address.split("/")[0]
    return ""


def _ip(*args: str) -> None:
    ip = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)
    if ip is None:
        raise NetworkError(
            "bridge networking needs the `ip` command to create a network namespace, and it is not installed; "
            "install iproute2, or use --network host or none"
        )
    done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NetworkError(f"`ip {' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")


class Cni:
    """Calls the plugins of `conflist` for one container."""

    def __init__(self, plugin_dir: str, net: BridgeNetwork, ipam_dir: str) -> None:
        self.plugin_dir = plugin_dir
        self.net = net
        self.conf = conflist(net, ipam_dir)
        # libcni's result cache (/var/lib/cni/results), beside the IPAM directory: DEL must get ADD's result as
        # prevResult, or the firewall plugin finds no IP and leaves its CNI-FORWARD rules behind for good.
        self.cache_dir = os.path.join(os.path.dirname(ipam_dir.rstrip("/")), "results")

    def _cache_path(self, container_id: str) -> str:
        return os.path.join(self.cache_dir, f"{self.net.name}-{container_id}-eth0")

    def _cache_result(self, container_id: str, result: Any) -> None:
        """Keep the chain's result so far (written after every plugin: a run killed half-way through ADD still
        leaves DEL the IPs it allocated)."""
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        path = self._cache_path(container_id)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(result, f)
        os.replace(path + ".tmp", path)

    def cached_result(self, container_id: str) -> Any:
        """The ADD result cached for `container_id`, or None (none cached, or unreadable)."""
        try:
            with open(self._cache_path(container_id), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _exec(self, command: str, plugin: Mapping[str, Any], container_id: str, netns: str, ifname: str,
              name: str, prev: Any, ports: Sequence[PortMapping]) -> Any:  # fmt: skip
        conf: dict[str, Any] = {"cniVersion": CNI_VERSION, "name": name, **plugin}
        if prev is not None:
            conf["prevResult"] = prev
        if plugin.get("capabilities", {}).get("portMappings"):
            conf["runtimeConfig"] = {"portMappings": port_mappings(ports)}
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": self.plugin_dir,
            "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
        }
        binary = os.path.join(self.plugin_dir, str(plugin["type"]))
        try:
            done = subprocess.run([binary], input=json.dumps(conf), env=env, capture_output=True, text=True,
                                  timeout=PLUGIN_TIMEOUT_S, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as err:
            raise NetworkError(f"CNI plugin {plugin['type']} could not run: {err}") from None
        if done.returncode != 0:
            detail = done.stdout.strip() or done.stderr.strip()
            with contextlib.suppress(ValueError):
                parsed = json.loads(detail)
                detail = f"{parsed.get('msg', '')} {parsed.get('details', '')}".strip()
            raise NetworkError(f"CNI plugin {plugin['type']} failed to {command} the network: {detail}")
        if command == "ADD" and done.stdout.strip():
            return json.loads(done.stdout)
        return prev

    def loopback(self, container_id: str, netns: str) -> None:
        self._exec("ADD", {"type": "loopback"}, container_id, netns, "lo", "lo", None, ())

    def add(self, container_id: str, netns: str, ports: Sequence[PortMapping]) -> str:
        """Set up lo and eth0 in `netns`; returns the container's IPv4 address."""
        self.loopback(container_id, netns)
        result: Any = None
        try:
            for plugin in self.conf["plugins"]:
                result = self._exec("ADD", plugin, container_id, netns, "eth0", self.net.name, result, ports)
                if result is not None:
                    self._cache_result(container_id, result)
        except NetworkError:
            self.delete(container_id, netns, ports)
            raise
        return ipv4_of(result)

    def delete(self, container_id: str, netns: str, ports: Sequence[PortMapping]) -> list[str]:
        """DEL in reverse order; every plugin is called even if one fails. Returns the failures."""
        errors: list[str] = []
        prev = self.cached_result(container_id)
        for plugin in reversed(self.conf["plugins"]):
            try:
                self._exec("DEL", plugin, container_id, netns, "eth0", self.net.name, prev, ports)
            except NetworkError as err:
                errors.append(err.message)
        if not errors:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._cache_path(container_id))
        return errors


# ---------------------------------------------------------------------------------------------- host ports

# The portmap plugin only writes DNAT rules: it takes a port whoever else uses it (a host server on it is silently
# bypassed, and of two containers the first rule wins). So, as docker's port allocator does, socirun checks a host
# port before the rules exist: against the ports other socirun containers publish (their state) and by binding it.


def _ip_family(host_ip: str) -> tuple[int, str]:
    import socket

    address = host_ip or "0.0.0.0"
    return (socket.AF_INET6 if ":" in address else socket.AF_INET), address


def _wildcard(ip: str) -> bool:
    return ip in ("", "0.0.0.0", "::")


def ports_clash(a: PortMapping, b: PortMapping) -> bool:
    """Whether two mappings want the same host port: same protocol and port, and addresses that overlap (the
    wildcard address overlaps every address)."""
    if a.protocol != b.protocol or a.host_port != b.host_port or a.host_port == 0:
        return False
    return _wildcard(a.host_ip) or _wildcard(b.host_ip) or a.host_ip == b.host_ip


def shown_address(p: PortMapping) -> str:
    """`0.0.0.0:8080`, `[::1]:8080`: how docker names a host address and port in its messages and `ps`."""
    ip = p.host_ip or "0.0.0.0"
    return f"[{ip}]:{p.host_port}" if ":" in ip else f"{ip}:{p.host_port}"


def bind_problem(p: PortMapping) -> str | None:
    """Bind the host port as a server would (SO_REUSEADDR, so a TIME_WAIT leftover does not count); the OS's
    reason when it cannot be bound, else None."""
    import socket

    family, address = _ip_family(p.host_ip)
    kind = socket.SOCK_DGRAM if p.protocol == "udp" else socket.SOCK_STREAM
    try:
        with socket.socket(family, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, p.host_port))
            if kind == socket.SOCK_STREAM:
                s.listen(1)
    except OSError as err:
        return (err.strerror or str(err)).lower()
    return None


def free_port(host_ip: str, protocol: str) -> int:
    """A port the kernel says is free on `host_ip` now (bound to port 0, read, closed)."""
    import socket

    family, address = _ip_family(host_ip)
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


PICK_ATTEMPTS = 50


def resolve_host_ports(requested: Sequence[PortMapping], held: Sequence[PortMapping], *, endpoint: str,
                       probe: Any = bind_problem, pick: Any = free_port) -> list[PortMapping]:  # fmt: skip
    """`requested` with every host port 0 replaced by a free one, after checking each host port is free: not
    published by another container (`held`) nor by this same request, and bindable (`probe`). Raises docker's
    sentences. `probe` and `pick` are the socket checks (injected by tests)."""
    import dataclasses

    taken = list(held)
    out: list[PortMapping] = []
    for p in requested:
        if p.host_port == 0:
            for _ in range(PICK_ATTEMPTS):
                candidate = dataclasses.replace(p, host_port=pick(p.host_ip, p.protocol))
                if not any(ports_clash(candidate, h) for h in taken) and probe(candidate) is None:
                    break
            else:
                raise NetworkError(f"no free host port for {shown_address(p)}/{p.protocol} after "
                                   f"{PICK_ATTEMPTS} tries")  # fmt: skip
            p = candidate
        else:
            if any(ports_clash(p, h) for h in taken):
                raise NetworkError(f"Bind for {shown_address(p)} failed: port is already allocated")
            problem = probe(p)
            if problem is not None:
                family = "tcp6" if ":" in (p.host_ip or "") else "tcp4"
                proto = family if p.protocol == "tcp" else p.protocol
                raise NetworkError(f"driver failed programming external connectivity on endpoint {endpoint}: "
                                   f"Error starting userland proxy: listen {proto} {shown_address(p)}: bind: "
                                   f"{problem}")  # fmt: skip
        taken.append(p)
        out.append(p)
    return out
