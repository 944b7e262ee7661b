# Sourced by install.sh, build_llama.sh, build_worker.sh and gpu_check.sh: the one choice of
# llama.cpp GPU backend for every build on this host.
#
#   TIGHTWAD_BACKEND=cuda|rocm|metal|vulkan|cpu   chooses; unset, it is detected:
#     nvidia-smi, or nvcc with an NVIDIA driver loaded -> cuda
#       (nvcc alone, on a host without the driver, is a toolkit without a GPU: a CUDA build
#        there could not run; TIGHTWAD_BACKEND=cuda builds for it anyway)
#     hipcc, rocminfo or /opt/rocm  -> rocm
#     macOS on arm64                -> metal
#     a Vulkan loader + headers + glslc -> vulkan
#     else                          -> cpu
#
# Detection reads only the commands on $PATH and a few files under $TIGHTWAD_SYSROOT (default /),
# and `uname` unless TIGHTWAD_UNAME_S / TIGHTWAD_UNAME_M say otherwise, so tests can fake a host.

_tightwad_has_vulkan() {
  command -v glslc >/dev/null 2>&1 || return 1
  [[ -f "$1/usr/include/vulkan/vulkan.h" ]] || return 1
  compgen -G "$1/usr/lib/*/libvulkan.so*" >/dev/null || compgen -G "$1/usr/lib/libvulkan.so*" >/dev/null
}

tightwad_detect_backend() {
  local root="${TIGHTWAD_SYSROOT:-}"
  local os="${TIGHTWAD_UNAME_S:-$(uname -s)}" arch="${TIGHTWAD_UNAME_M:-$(uname -m)}"
  if command -v nvidia-smi >/dev/null 2>&1 \
      || { command -v nvcc >/dev/null 2>&1 && [[ -e "$root/proc/driver/nvidia" ]]; }; then echo cuda
  elif command -v hipcc >/dev/null 2>&1 || command -v rocminfo >/dev/null 2>&1 \
      || [[ -d "$root/opt/rocm" ]]; then echo rocm
  elif [[ "$os" == Darwin && "$arch" == arm64 ]]; then echo metal
  elif _tightwad_has_vulkan "$root"; then echo vulkan
  else
    if command -v nvcc >/dev/null 2>&1; then
      echo "backend: nvcc found but no NVIDIA driver (/proc/driver/nvidia); not building for CUDA (TIGHTWAD_BACKEND=cuda to force)" >&2
    fi
    echo cpu
  fi
}

# tightwad_backend: the backend to build for (chosen or detected); exits 2 on an unknown name.
tightwad_backend() {
  local b="${TIGHTWAD_BACKEND:-}"
  [[ -n "$b" ]] || b="$(tightwad_detect_backend)"
  case "$b" in
    cuda|rocm|metal|vulkan|cpu) echo "$b" ;;
    *) echo "backend: unknown TIGHTWAD_BACKEND='$b' (choose cuda, rocm, metal, vulkan or cpu)" >&2
       return 2 ;;
  esac
}

# tightwad_backend_flags BACKEND: the CMake flags for it, one per line.
tightwad_backend_flags() {
  case "$1" in
    cuda)   echo -DGGML_CUDA=ON; echo "-DCMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES:-native}" ;;
    rocm)   echo -DGGML_HIP=ON; [[ -n "${AMDGPU_TARGETS:-}" ]] && echo "-DAMDGPU_TARGETS=$AMDGPU_TARGETS" ;;
    metal)  echo -DGGML_METAL=ON; echo -DGGML_METAL_EMBED_LIBRARY=ON ;;
    vulkan) echo -DGGML_VULKAN=ON ;;
    cpu)    ;;
  esac
  return 0
}

# tightwad_backend_check BACKEND: a clear message naming what is missing, and exit 3, before any
# build starts (so the cache never holds a half-built backend).
tightwad_backend_check() {
  local missing=() root="${TIGHTWAD_SYSROOT:-}"
  case "$1" in
    cuda) command -v nvcc >/dev/null 2>&1 || missing+=("the CUDA toolkit (nvcc on PATH; e.g. apt install nvidia-cuda-toolkit)") ;;
    rocm) command -v hipcc >/dev/null 2>&1 || [[ -x "$root/opt/rocm/bin/hipcc" ]] \
            || missing+=("ROCm's HIP compiler (hipcc; install ROCm, see rocm.docs.amd.com)") ;;
    metal) [[ "${TIGHTWAD_UNAME_S:-$(uname -s)}" == Darwin ]] || missing+=("macOS (Metal exists only there)") ;;
    vulkan)
      [[ -f "$root/usr/include/vulkan/vulkan.h" ]] || missing+=("the Vulkan headers (apt install libvulkan-dev)")
      command -v glslc >/dev/null 2>&1 || missing+=("the glslc shader compiler (apt install glslc)")
      [[ -d "$root/usr/include/spirv" ]] || missing+=("the SPIR-V headers (apt install spirv-headers)") ;;
  esac
  if ((${#missing[@]})); then
    echo "backend: cannot build for $1: missing ${missing[*]}." >&2
    echo "backend: install that, or choose another backend: TIGHTWAD_BACKEND=cpu $0" >&2
    return 3
  fi
}

# tightwad_vulkan_visible PYTHON: ggml skips a Vulkan device of type CPU (Mesa's llvmpipe) unless
# GGML_VK_VISIBLE_DEVICES names it. Asked for Vulkan (TIGHTWAD_BACKEND=vulkan) where PYTHON's
# ggml sees no Vulkan device by default but does with GGML_VK_VISIBLE_DEVICES=0, export that and
# say so. A real Vulkan GPU is seen without it (nothing changes), and a GGML_VK_VISIBLE_DEVICES
# of the user's own is left as it is. Used by up.sh before `tightwad up`.
tightwad_vulkan_visible() {
  local py="$1"
  [[ "${TIGHTWAD_BACKEND:-}" == vulkan && -z "${GGML_VK_VISIBLE_DEVICES+set}" ]] || return 0
  _tightwad_vk_seen() {  # no pipe into grep -q: under pipefail an early exit reads as false
    local listed
    listed="$("$py" -m tightwad.engine.ggml_devices 2>/dev/null || true)"
    [[ "$listed" == *'"name": "Vulkan'* ]]
  }
  _tightwad_vk_seen && return 0
  if GGML_VK_VISIBLE_DEVICES=0 _tightwad_vk_seen; then
    export GGML_VK_VISIBLE_DEVICES=0
    echo "up: TIGHTWAD_BACKEND=vulkan: the only Vulkan device is of type CPU (e.g. Mesa's" \
      "llvmpipe), which ggml skips by default; using it with GGML_VK_VISIBLE_DEVICES=0" \
      "(set GGML_VK_VISIBLE_DEVICES yourself to choose another)" >&2
  else
    echo "up: TIGHTWAD_BACKEND=vulkan but ggml sees no Vulkan device: the engine runs on the CPU" >&2
  fi
}
