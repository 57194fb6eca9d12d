"""Hooks and replaced forwards that act only for the call that installed them.

A model shared by several threads runs every thread's forward through the same modules, so a hook
that one explanation registers would also fire in -- and corrupt -- another's forward. Each camkit
call therefore runs in a *call scope* (`scope`): a token held in a `contextvars`
variable, so it belongs to one thread (or one asyncio task). A hook registered through
`Hooks` runs its function only when the module is called inside the scope that registered
it; any other caller passes through as if the hook were not there. A forward replaced through
`Hooks.replace_forward` likewise sends only this scope's calls to the replacement; every other
caller reaches the module's own forward.

Nested camkit code (a method's forward inside its ``explain``) shares the enclosing call's scope.
Limitation: a model whose forward runs its layers in threads of its own leaves the scope there, so
camkit's hooks do not fire in those threads. ``DataParallel`` (replicas in threads) and
``DistributedDataParallel`` are therefore explained through the module they wrap
(`camkit.layers.wrappers`), in the caller's thread.
"""
from __future__ import annotations

import threading
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Optional

from torch import nn


class Scope:
    """The token of one camkit call; ``active`` turns False when the call's scope ends."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True


_CURRENT: ContextVar[Optional[Scope]] = ContextVar("camkit_call", default=None)


@contextmanager
def scope() -> Iterator[Scope]:
    """Run a block as one camkit call (inside an enclosing call: as part of that call)."""
    outer = _CURRENT.get()
    if outer is not None:
        yield outer
        return
    call = Scope()
    token = _CURRENT.set(call)
    try:
        yield call
    finally:
        call.active = False
        _CURRENT.reset(token)


class _Local:
    """A torch hook that runs ``fn`` only inside ``call``'s scope (and returns None elsewhere)."""

    __slots__ = ("fn", "call")

    def __init__(self, fn: Callable[..., Any], call: Scope) -> None:
        self.fn, self.call = fn, call

    def __call__(self, *args: Any) -> Any:
        if _CURRENT.get() is self.call:
            return self.fn(*args)
        return None


def is_stale(hook: Any) -> bool:
    """Whether ``hook`` (a value of a module's hook dict) is a camkit hook whose call has ended."""
    return isinstance(hook, _Local) and not hook.call.active


class _Router:
    """Stands in for ``module.forward`` while some call replaces it: each call reaches its own
    replacement ``fn(original, *args, **kwargs)``, every other caller the original forward."""

    def __init__(self, module: nn.Module) -> None:
        self.had_own = "forward" in module.__dict__  # an instance attribute the user set
        self.original = module.forward
        self.routes: dict[Scope, Callable[..., Any]] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self.routes.get(_CURRENT.get())  # type: ignore[arg-type]
        if fn is None:
            return self.original(*args, **kwargs)
        return fn(self.original, *args, **kwargs)


_ROUTERS: dict[int, _Router] = {}
_ROUTER_LOCK = threading.Lock()


def _route(module: nn.Module, call: Scope, fn: Callable[..., Any]) -> None:
    with _ROUTER_LOCK:
        router = _ROUTERS.get(id(module))
        if router is None or module.__dict__.get("forward") is not router:
            router = _ROUTERS[id(module)] = _Router(module)
            module.forward = router  # type: ignore[method-assign]
        router.routes[call] = fn


def _unroute(module: nn.Module, call: Scope) -> None:
    with _ROUTER_LOCK:
        router = _ROUTERS.get(id(module))
        if router is None:
            return
        router.routes.pop(call, None)
        if router.routes:
            return
        del _ROUTERS[id(module)]
        if module.__dict__.get("forward") is router:
            if router.had_own:
                module.forward = router.original  # type: ignore[method-assign]
            else:
                del module.forward


class Hooks:
    """Forward hooks, pre-hooks and replaced forwards for the current call; all removed on exit.

    >>> with Hooks() as h:
    ...     h.on_forward(model.layer4, lambda m, args, out: seen.append(out))
    ...     model(x)            # fires for this call; other threads' forwards are not seen
    """

    def __enter__(self) -> "Hooks":
        self._stack = ExitStack()
        self.call = self._stack.enter_context(scope())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def on_forward(self, module: nn.Module, fn: Callable[[nn.Module, Any, Any], Any]) -> None:
        """``fn(module, args, output)`` after ``module`` runs in this call; a non-None return replaces the output."""
        self._stack.callback(module.register_forward_hook(_Local(fn, self.call)).remove)

    def before_forward(self, module: nn.Module, fn: Callable[[nn.Module, Any], Any]) -> None:
        """``fn(module, args)`` before ``module`` runs in this call."""
        self._stack.callback(module.register_forward_pre_hook(_Local(fn, self.call)).remove)

    def replace_forward(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        """In this call ``module``'s forward becomes ``fn(original_forward, *args, **kwargs)``; hooks
        still run around it. Other callers of the module are not affected."""
        _route(module, self.call, fn)
        self._stack.callback(_unroute, module, self.call)
