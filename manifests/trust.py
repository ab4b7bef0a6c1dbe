"""What a manifest may make a machine do, and the bounds on reading one.

A manifest from the user's own file (`mlscope evaluate`) is their code: any builder, any path,
any URL (`LOCAL_SOURCES`). A manifest that came over the network (a remote job) never names
code: its model is a built-in builder, one the predictor's owner allowed, or a checksummed file
from a public URL (`ModelSources.remote(...)`). Pure: the address check takes its resolver.
"""

from __future__ import annotations

import ipaddress
import re
import reprlib
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_MANIFEST_SIZE = 64 * 1024
"""Characters of a manifest's text (bytes of its file): a manifest is a page of YAML (the
built-ins are ~1 KiB), so a larger one is refused unparsed."""
MAX_ERROR_CHARS = 500
"""An error message names what is wrong, never echoes a hostile value whole."""

BUILDER_PATTERN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
"""`package.module:function`."""
_BUILTIN_MODULE = "mlscope.manifests.models"
BUILTIN_BUILDERS: frozenset[str] = frozenset(
    f"{_BUILTIN_MODULE}:{function}" for function in ("alexnet", "resnet18", "mobilenet_v2", "bert_tiny", "digits_mlp")
)
"""The architectures in manifests/models.py: code mlscope ships, safe to build for anyone."""

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 6, 6, 2

Resolver = Callable[[str], Sequence[str]]


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text`, cut to `limit` characters with a marker saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def short_repr(value: Any) -> str:
    """repr(value) computed within a bound: a shared-alias structure's full repr can be gigabytes."""
    return _REPR.repr(value)


class SourceRefused(ValueError):
    """A model source this machine does not accept from where the manifest came from."""


@dataclass(frozen=True)
class ModelSources:
    """Which model sources a machine accepts. `builders` None: any (the user's own manifest)."""

    builders: frozenset[str] | None
    paths: bool
    private_urls: bool

    @classmethod
    def remote(cls, extra_builders: Sequence[str] = (), paths: bool = False,
               private_urls: bool = False) -> ModelSources:
        """A predictor's: the built-in builders plus those its owner allows (`--allow-builder`)."""
        return cls(BUILTIN_BUILDERS | frozenset(extra_builders), paths, private_urls)

    def check_builder(self, builder: str) -> None:
        if self.builders is not None and builder not in self.builders:
            raise SourceRefused(f"builder {bounded(builder, 120)!r} is not allowed for a manifest from the network "
                                f"(built-in builders only, or mlscope predictor --allow-builder module:function)")

    def check_path(self) -> None:
        if not self.paths:
            raise SourceRefused("a model path is not allowed for a manifest from the network "
                                "(mlscope predictor --allow-path allows it)")

    def check_host(self, host: str, resolve: Resolver | None = None) -> None:
        """Every address `host` resolves to must be public unless private URLs are allowed."""
        if self.private_urls:
            return
        try:
            addresses = (resolve or resolved_addresses)(host)
        except OSError as exc:
            raise SourceRefused(f"cannot resolve {bounded(host, 120)!r}: {exc}") from None
        for address in addresses:
            self.check_address(address, host)

    def check_address(self, address: str, host: str) -> None:
        if not self.private_urls and is_private_address(address):
            raise SourceRefused(f"{bounded(host, 120)} is a private, loopback or reserved address ({address}): not "
                                f"allowed for a manifest from the network (mlscope predictor --allow-private-urls)")


LOCAL_SOURCES = ModelSources(builders=None, paths=True, private_urls=True)
"""The user's own manifest file, run on their machine: it is their code."""


def is_private_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope (fe80::1%eth0) is not part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast
            or ip.is_unspecified)


def resolved_addresses(host: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
