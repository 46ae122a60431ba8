"""Start a pass over a prompt from what an earlier pass over the same prompt computed below the first fusion layer.

Audio enters SAFE only through the fusion blocks, so the frozen decoder layers below the first one compute the same
states for a prompt at every budget. Stage A's teacher (budget 0) and student (fused) read the same batch, and a
rollout answers every batch at budget 0 and then at each budget k > 0. `recording(layers, first)` keeps the first
pass's input to decoder layer `first` and, when the pass keeps a key/value cache (generation), the prompt's keys and
values of every layer below it (`PromptPrefix`). `replaying(layers, prefix)` makes those layers hand them back on a
later pass's prompt step instead of computing them; the later steps of generation (one new token each) run every
layer as usual. The replayed pass computes exactly what a full pass would: the layers it skips see the same input.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn


@dataclass(frozen=True)
class PromptPrefix:
    """What decoder layers 0..layer-1 computed for a batch's prompt."""

    layer: int
    """The first decoder layer a replayed pass runs."""
    hidden: torch.Tensor  # (B, T, D): that layer's input on the prompt
    keys: tuple[torch.Tensor, ...] = ()  # one (B, H_kv, T, head_dim) per layer below `layer`; () without a cache
    values: tuple[torch.Tensor, ...] = ()  # as keys

    def rows(self, index: torch.Tensor) -> "PromptPrefix":
        """The prefix of the batch's rows `index` (B',): a sub-batch that keeps the batch's padding."""
        pick = lambda t: t.index_select(0, index.to(t.device))  # noqa: E731
        return PromptPrefix(self.layer, pick(self.hidden), tuple(map(pick, self.keys)), tuple(map(pick, self.values)))


def _cache_argument(kwargs: dict[str, Any]) -> Any:
    """The key/value cache a decoder layer was called with (transformers 5 names it `cache`, before `past_key_values`)."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


class PrefixRecorder:
    """Collects one pass's prefix (`recording`); `prefix` once the pass has run."""

    def __init__(self, layer: int):
        self.layer = layer
        self._hidden: torch.Tensor | None = None
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hidden_hook(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._hidden is None:  # the prompt step; generation's later steps see one new token each
            self._hidden = (args[0] if args else kwargs["hidden_states"]).detach()

    def cache_hook(self, index: int, _module: nn.Module, _args: tuple, kwargs: dict, _output: Any) -> None:
        cache = _cache_argument(kwargs)
        if cache is not None and index not in self._cache:
            layer_cache = cache.layers[index]  # after the prompt step it holds exactly the prompt's keys and values
            self._cache[index] = (layer_cache.keys.detach(), layer_cache.values.detach())

    @property
    def prefix(self) -> PromptPrefix:
        if self._hidden is None:
            raise RuntimeError(f"no pass reached decoder layer {self.layer} while recording its prompt prefix")
        if len(self._cache) not in (0, self.layer):
            raise RuntimeError(f"only {len(self._cache)} of the {self.layer} layers below {self.layer} kept a cache")
        ordered = [self._cache[i] for i in range(self.layer)] if self._cache else []
        return PromptPrefix(self.layer, self._hidden, tuple(k for k, _ in ordered), tuple(v for _, v in ordered))


@contextlib.contextmanager
def recording(layers: nn.ModuleList, layer: int) -> Iterator[PrefixRecorder]:
    """Record the next pass's prefix at decoder layer `layer` (its input, and the cache of the layers below)."""
    if not 0 <= layer < len(layers):
        raise ValueError(f"decoder layer {layer} does not exist (the model has {len(layers)})")
    recorder = PrefixRecorder(layer)
    handles = [layers[layer].register_forward_pre_hook(recorder.hidden_hook, with_kwargs=True)]
    handles += [layers[i].register_forward_hook(
        lambda m, a, k, o, i=i: recorder.cache_hook(i, m, a, k, o), with_kwargs=True) for i in range(layer)]
    try:
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def replaying(layers: nn.ModuleList, prefix: PromptPrefix) -> Iterator[None]:
    """Passes inside start from `prefix`: on its first call each layer below `prefix.layer` puts its recorded keys and
    values in the pass's cache (if it keeps one) and returns the recorded input of `prefix.layer`; later calls (new
    tokens) run the layer. The pass must be over the prompt the prefix was recorded on."""
    replayed: set[int] = set()

    def replay(index: int, original):
        def forward(hidden_states: torch.Tensor, *args, **kwargs):
            if index in replayed:
                return original(hidden_states, *args, **kwargs)
            replayed.add(index)
            if tuple(hidden_states.shape[:2]) != tuple(prefix.hidden.shape[:2]):
                raise ValueError(f"the prompt prefix was recorded for {tuple(prefix.hidden.shape[:2])} (batch, tokens), "
                                 f"this pass has {tuple(hidden_states.shape[:2])}")
            cache = _cache_argument(kwargs)
            if cache is not None:
                if not prefix.keys:
                    raise ValueError("this pass keeps a key/value cache but the prefix was recorded without one")
                cache.update(prefix.keys[index], prefix.values[index], index)
            return prefix.hidden

        return forward

    patched = []
    for index in range(prefix.layer):
        module = layers[index]
        patched.append((module, module.__dict__.get("forward")))
        module.forward = replay(index, module.forward)
    try:
        yield
    finally:
        for module, previous in patched:
            if previous is None:
                del module.forward
            else:
                module.forward = previous
