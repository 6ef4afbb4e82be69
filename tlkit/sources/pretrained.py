"""Where default pretrained weights come from: a local copy first, else a download that fails fast offline.

torchvision weights live where torchvision keeps them (``$TORCH_HOME/hub/checkpoints/<file>``) and
are fetched with ``torch.hub.download_url_to_file`` (progress bar, sha256 prefix check, atomic
rename). timm weights are looked for in ``$TORCH_HOME/hub/checkpoints/timm/<arch.tag>.safetensors``
(a place to drop a file by hand) and in the Hugging Face cache, then fetched with
``huggingface_hub.hf_hub_download``. Before any download the host (or the proxy) is probed with a
3-second connection, so an offline machine gets one line naming the file and where it goes, not
half a minute of retries.
"""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tlkit.errors import WeightsError
from tlkit.sources.weights import hub_checkpoint_dir, offline

PROBE_TIMEOUT = 3.0
SILENCE_TIMEOUT = 15.0  # torch.hub opens the URL without a timeout: a server that never sends a byte is given up this soon
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def reachable(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to ``url``'s host (or the proxy the environment names) opens within ``timeout``."""
    if offline():
        return False
    parts = urllib.parse.urlsplit(url)
    proxy = None if urllib.request.proxy_bypass(parts.hostname or "") else urllib.request.getproxies().get(parts.scheme)
    target = urllib.parse.urlsplit(proxy) if proxy else parts
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((target.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def fetch_url(url: str, what: str, *, dest_dir: Path | None = None) -> Path:
    """The file at ``url`` in the torch hub checkpoint folder, downloaded there once if missing.

    torchvision and timm name such files ``<name>-<first 8 hex of sha256>.<ext>``; that prefix is checked.
    """
    folder = dest_dir or hub_checkpoint_dir()
    filename = Path(urllib.parse.urlsplit(url).path).name
    dest = folder / filename
    if dest.is_file():
        return dest
    where = f"download {url} and save it as {dest} (or set backbone.weights: PATH; weights: none for random weights)"
    if not reachable(url):
        host = urllib.parse.urlsplit(url).hostname
        # The cause says "network": the CLI then adds how to run offline (tlkit.cli.listings.offline_hint).
        raise WeightsError(f"no pretrained weights for {what} on this machine and {host} is unreachable: {where}") from ConnectionError(f"{host} is unreachable")
    stem = filename.rsplit(".", 1)[0]
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with _socket_timeout(SILENCE_TIMEOUT):
            torch.hub.download_url_to_file(url, str(dest), hash_prefix=prefix if len(prefix) >= 6 and _hex(prefix) else None, progress=True)
    except RuntimeError as exc:  # torch.hub's "invalid hash value": the partial file is already removed
        raise WeightsError(f"the download of {url} for {what} is damaged ({exc}); try again, or {where}") from exc
    except OSError as exc:
        raise WeightsError(f"the download of {url} for {what} failed ({type(exc).__name__}: {exc}); {where}") from exc
    return dest


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Sockets opened without a timeout (``torch.hub``'s ``urlopen``) wait at most ``seconds`` for each reply, within the block."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text.lower())


# --- timm ------------------------------------------------------------------------------------------


def timm_local_file(name: str) -> Path:
    """Where a hand-downloaded file for timm ``arch.tag`` is looked for first."""
    return hub_checkpoint_dir() / "timm" / f"{name}.safetensors"


def _timm_cfg(name: str) -> Any:
    import timm

    return timm.models.get_pretrained_cfg(name)


def _full_name(name: str, cfg: Any) -> str:
    """``resnet50`` -> ``resnet50.a1_in1k`` (timm's default tag), so messages name the real file."""
    tag = getattr(cfg, "tag", None)
    return name if "." in name or not tag else f"{name}.{tag}"


def timm_cached_file(name: str) -> Path | None:
    """timm ``name``'s weights already on this machine: the hand-placed file, the HF cache, the torch hub folder."""
    cfg = _timm_cfg(name)
    if cfg is None:
        return None
    local = timm_local_file(_full_name(name, cfg))
    if local.is_file():
        return local
    if getattr(cfg, "hf_hub_id", None):
        from huggingface_hub import try_to_load_from_cache

        for filename in HF_WEIGHT_FILES:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    url = getattr(cfg, "url", None)
    if url:
        cached = hub_checkpoint_dir() / Path(urllib.parse.urlsplit(url).path).name
        if cached.is_file():
            return cached
    return None


def timm_weights_file(name: str) -> Path:
    """timm ``name``'s pretrained weights file: a local copy, else downloaded, else one line saying where it goes."""
    cached = timm_cached_file(name)
    if cached is not None:
        return cached
    cfg = _timm_cfg(name)
    what = f"timm '{name}'"
    if cfg is None or not (getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None)):
        raise WeightsError(f"{what} has no pretrained weights; set backbone.weights: PATH, or weights: none for random weights")
    full = _full_name(name, cfg)
    if not cfg.hf_hub_id:
        return fetch_url(cfg.url, what)
    url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{HF_WEIGHT_FILES[0]}"
    where = f"download {url} and save it as {timm_local_file(full)} (or set backbone.weights: PATH; weights: none for random weights)"
    if not reachable(url):
        raise WeightsError(f"no pretrained weights for {what} on this machine and huggingface.co is unreachable: {where}") from ConnectionError("huggingface.co is unreachable")
    from huggingface_hub import hf_hub_download

    problems = []
    for filename in HF_WEIGHT_FILES:
        try:
            return Path(hf_hub_download(cfg.hf_hub_id, filename, etag_timeout=PROBE_TIMEOUT))
        except Exception as exc:  # noqa: BLE001 - the hub raises many types; each means "not this file"
            problems.append(f"{filename}: {type(exc).__name__}")
    raise WeightsError(f"the hub gave no weights for {what} ({', '.join(problems)}): {where}")
