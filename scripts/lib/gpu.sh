# Shared by scripts/bootstrap and scripts/install-service: pick PyTorch and ONNX Runtime builds.
# GTX 9xx/10xx (compute capability below 7.5) need PyTorch's cu126 build, the last with Maxwell and Pascal
# kernels, and onnxruntime-gpu 1.20.x, the last release with sm_52 kernels.

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

nstd_torch_index() {
  case "$1" in
    cpu) echo "" ;;  # pip's configured index; on a machine with a local CPU wheel that is what it finds
    *) echo "https://download.pytorch.org/whl/$1" ;;
  esac
}

nstd_ort_spec() {
  case "$1" in
    cu126) echo "onnxruntime-gpu==1.20.1" ;;
    *) echo "onnxruntime-gpu>=1.20" ;;
  esac
}
