# Shared by scripts/bootstrap and scripts/install-service: pick PyTorch and ONNX Runtime builds.
# GTX 9xx/10xx (compute capability below 7.5) need PyTorch's cu126 build, the last with Maxwell and Pascal
# kernels, and onnxruntime-gpu 1.20.x, the last release with sm_52 kernels. Machines without an NVIDIA GPU
# get PyTorch's CPU wheel and the CPU onnxruntime package: from the standard index, plain `torch` pulls
# about 2.2 GB of CUDA 13 libraries that can never run there, and onnxruntime-gpu is 3x the CPU package.

NSTD_PYTORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

# Lowest compute capability among the NVIDIA GPUs, as "5.2"; empty without nvidia-smi or a GPU.
nstd_compute_capability() {
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | sort -V | head -n 1 | tr -d ' '
}

nstd_torch_build() {
  if [[ -n "${NSTD_TORCH_BUILD:-}" ]]; then echo "$NSTD_TORCH_BUILD"; return; fi
  local cc
  cc="$(nstd_compute_capability)"
  if [[ -z "$cc" ]]; then echo cpu
  elif [[ "$(printf '%s\n7.5\n' "$cc" | sort -V | head -n 1)" != "7.5" ]]; then echo cu126
  else echo cu130
  fi
}

# The torch requirement: the CPU build names its local version, so that no index can hand it a CUDA wheel.
nstd_torch_spec() {  # BUILD VERSION
  case "$1" in
    cpu) echo "torch==$2+cpu" ;;
    *) echo "torch==$2" ;;
  esac
}

# Index for the CUDA builds; the CPU build's source is decided by nstd_cpu_torch_index at install time.
nstd_torch_index() {
  case "$1" in
    cpu) echo "$NSTD_PYTORCH_CPU_INDEX" ;;
    *) echo "https://download.pytorch.org/whl/$1" ;;
  esac
}

# "" when pip's own configuration already offers SPEC (a local wheel in find-links, a mirror that carries
# PyTorch's CPU wheels), else PyTorch's CPU index. Asking first keeps machines without internet access
# working: pip would spend minutes retrying an unreachable index before it looked at the local wheel.
nstd_cpu_torch_index() {  # PYTHON SPEC
  if "$1" -m pip install --dry-run --no-deps --ignore-installed --quiet --disable-pip-version-check \
    "$2" >/dev/null 2>&1; then
    echo ""
  else
    echo "$NSTD_PYTORCH_CPU_INDEX"
  fi
}

nstd_ort_spec() {
  case "$1" in
    cpu) echo "onnxruntime>=1.20" ;;
    cu126) echo "onnxruntime-gpu==1.20.1" ;;
    *) echo "onnxruntime-gpu>=1.20" ;;
  esac
}

# The distribution name of an onnxruntime requirement ("onnxruntime" or "onnxruntime-gpu").
nstd_ort_package() {  # SPEC
  local name="${1%%[<>=!~ ;\[]*}"
  echo "${name,,}"
}
