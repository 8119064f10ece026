"""The stack's three components and how to start, stop, kill, restart and reload them.

A fault (:mod:`exporter.demo.catalogue`) acts through a :class:`Services` object, so the same fault
runs against plain child processes (:class:`ProcessServices`, the demo) or units of a real systemd
(the fault-matrix test's ``SystemdServices``).
"""

from __future__ import annotations

from typing import Literal, Protocol

from exporter.demo.stack import Stack

Component = Literal["php_fpm", "nginx", "backend"]
COMPONENTS: tuple[Component, ...] = ("php_fpm", "backend", "nginx")


class FaultError(Exception):
    """A fault could not be injected or healed; the message says why."""


class Services(Protocol):
    """Start, stop, kill, restart and reload the stack's three components."""

    kind: str

    def start(self, component: Component) -> None: ...
    def stop(self, component: Component) -> None: ...
    def kill(self, component: Component) -> None: ...
    def restart(self, component: Component) -> None: ...
    def reload(self, component: Component) -> None: ...


class ProcessServices:
    """The components as plain child processes of this one (:class:`Stack`'s own methods)."""

    kind = "plain processes"

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def start(self, component: Component) -> None:
        {"php_fpm": self.stack.start_php_fpm, "nginx": self.stack.start_nginx,
         "backend": self.stack.start_backend}[component]()  # fmt: skip

    def stop(self, component: Component) -> None:
        {"php_fpm": self.stack.stop_php_fpm, "nginx": self.stack.stop_nginx,
         "backend": self.stack.stop_backend}[component]()  # fmt: skip

    def kill(self, component: Component) -> None:
        if component != "php_fpm":
            raise FaultError(f"no kill for {component} in the plain-process stack")
        self.stack.kill_php_fpm()

    def restart(self, component: Component) -> None:
        self.stop(component)
        self.start(component)

    def reload(self, component: Component) -> None:
        if component != "nginx":
            raise FaultError(f"no reload for {component}")
        self.stack.reload_nginx()
