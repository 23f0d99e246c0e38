"""Starting a run from published weights: find one component's model folder in what the user named, fetch
it from the Hugging Face Hub when it is a repo id, and load it from safetensors only.

``init`` may be a diffusers model folder (``config.json`` + ``*.safetensors``), a pipeline folder
(``model_index.json``; its ``vqvae/`` or ``unet/``), a vqldm run folder (holding ``vqvae/`` or
``pipeline/``), or a Hub repo id ``owner/name`` (only that component's config and safetensors are
downloaded). Pickled weights are refused, never loaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .checkpoint import PICKLE_SUFFIXES, refuse_pickle
from .errors import UserError

HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name, as the Hub spells repo ids


def init_folder(init: str, component: str, what: str = "--init") -> Path:
    """The local model folder of ``component`` ("vqvae" or "unet") in ``init``, downloading it from the Hub
    when ``init`` is a repo id that is not a local path; a one-line UserError when there is none."""
    p = Path(init).expanduser()
    refuse_pickle(p)  # a .ckpt/.bin handed as the model: name the conversion, never unpickle
    if p.is_file():
        raise UserError(f"{what} {init!r} is a file; pass the folder that holds it and its config.json")
    if not p.exists():
        if not HUB_REPO_ID.fullmatch(init):
            raise UserError(f"{what} {init!r} not found; pass a model, pipeline or vqldm run folder, or a Hub repo id owner/name")
        p = download_component(init, component, what)
    for folder in (p / "pipeline" / component, p / component, p):
        if (folder / "config.json").is_file():
            break
    else:
        raise UserError(f"{what} {init!r} holds no {component}/ folder or config.json; pass a {component} model folder, "
                        f"a pipeline folder or a vqldm run folder")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(f for f in folder.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            refuse_pickle(pickles[0])
        raise UserError(f"{what} {str(folder)!r} has no safetensors weights beside its config.json (vqldm loads only "
                        f"safetensors: convert pickled weights with `vqldm convert FILE --trust-pickle`)")
    return folder


def read_model_config(folder: Path, classes: tuple[str, ...], what: str = "--init") -> dict:
    """The ``config.json`` of a model folder, which must describe one of ``classes`` (diffusers class names)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{what} {str(folder / 'config.json')!r} is not readable JSON") from None
    if config.get("_class_name") not in classes:
        raise UserError(f"{what} {str(folder)!r} holds a {config.get('_class_name')!r}, not a {' or '.join(classes)}")
    return config


def load_init_model(model_class, folder: Path, what: str = "--init"):
    """``model_class.from_pretrained(folder)`` from safetensors, in float32, trainable."""
    try:
        model = model_class.from_pretrained(folder, use_safetensors=True, torch_dtype=torch.float32)
    except Exception as err:  # diffusers raises several types for bad folders
        raise UserError(f"could not load {what} {str(folder)!r} ({(str(err).splitlines() or [''])[0][:160]})") from None
    model.register_to_config(_name_or_path=str(folder))  # a str, as JSON (a checkpoint's state.json) needs
    return model.train().requires_grad_(True)


def download_component(repo: str, component: str, what: str = "--init") -> Path:
    """The snapshot folder of Hub repo ``repo`` holding only what ``component`` needs: a pipeline repo's
    ``model_index.json`` + ``component/config.json`` + its safetensors, or a model repo's root ones."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        root = Path(snapshot_download(repo, allow_patterns=["model_index.json", "config.json"]))  # the layout, tiny
        sub = f"{component}/" if (root / "model_index.json").is_file() else ""
        return Path(snapshot_download(repo, allow_patterns=["model_index.json", f"{sub}config.json", f"{sub}*.safetensors"]))
    except (RepositoryNotFoundError, GatedRepoError):
        raise UserError(f"{what} {repo!r} is neither a local folder nor a Hub repo you can read; check the name "
                        f"(a private or gated repo needs `hf auth login`)") from None
    except LocalEntryNotFoundError:  # offline, or the Hub unreachable, and nothing cached
        raise UserError(f"{what} {repo!r} is not a local folder and the Hugging Face Hub cannot be reached to "
                        f"download it; pass a local folder (a model or pipeline folder, or a vqldm run)") from None
    except HfHubHTTPError as err:
        raise UserError(f"could not download {what} {repo!r} from the Hugging Face Hub ({str(err).splitlines()[0][:160]}); "
                        f"try again, or pass a local folder") from None
