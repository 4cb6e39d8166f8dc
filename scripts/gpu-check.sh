#!/usr/bin/env bash
# GPU check, run once on a lent CUDA machine (not in CI): build against the
# CUDA libtorch of the machine's PyTorch, run the reference checks on cuda
# (f32 within 1e-4; f16 and bf16 within the tolerances below), path
# patching on cuda against the CPU reference, a forward benchmark, and a
# short load run of nppd on the GPU. Every step runs even if one fails; the
# log goes to $OUT (or ./gpu-out).
#
# Dependencies the machine may lack (jansson, pcre2, libmicrohttpd, libuv,
# pkgconf) can be carried as an extracted Debian sysroot in .gpu/sysroot
# (and gnutls in .gpu/gnutls); the script uses them when present.
#   scripts/gpu-check.sh
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
log=$out/gpu-check.log
exec > >(tee "$log") 2>&1
step() { echo; echo "=== $* ($(date +%T))"; }

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
grep PRETTY_NAME /etc/os-release
py=$(command -v python3)
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
nproc

step dependencies
sys=$root/.gpu/sysroot
if [ -d "$sys" ]; then
  export PKG_CONFIG="$sys/usr/bin/pkgconf"
  export PKG_CONFIG_PATH="$sys/usr/lib/x86_64-linux-gnu/pkgconfig"
  export PKG_CONFIG_SYSROOT_DIR="$sys" PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1
  export LD_LIBRARY_PATH="$sys/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if ! ldconfig -p | grep -q 'libgnutls.so.30 '; then
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$root/.gpu/gnutls/usr/lib/x86_64-linux-gnu"
    echo "using carried gnutls"
  fi
  echo "using the carried sysroot $sys"
fi
tp=$($py -c "import torch; print(torch.utils.cmake_prefix_path)")

step build
# Another compiler may warn where Debian's gcc 12 does not: no -Werror here.
# If this PyTorch's headers need C++20, retry with it.
for std in 17 20; do
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$tp" \
    -DNPP_WITH_GRAPHVIZ=OFF -DNPP_WERROR=OFF -DBUILD_TESTING=OFF -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCMAKE_CXX_STANDARD=$std >"$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; continue; }
  cmake --build build-cuda -j"$(nproc)" >"$out/build.log" 2>&1 && { echo "built with C++$std"; break; }
  grep -E "error" "$out/build.log" | head -20
done
B=$root/build-cuda
$B/npp version

step models
V=$root/vocab
M=$out/models
$B/npp make-model --out $M/tiny --vocab-dir $V --layers 2 --heads 4 --embd 64 --positions 128 --seed 1 --init-std 0.1
$B/npp make-model --out $M/small --vocab-dir $V --layers 12 --heads 12 --embd 768 --positions 1024 --seed 6

step "forward vs reference on cuda (f32 1e-4, f16 0.05, bf16 0.25)"
T="The capital of Spain is Madrid, and the capital of Italy is Rome. In 2024, naive researchers said: don't patch everything!"
for m in tiny small; do
  $py tests/reference/check_forward.py --npp $B/npp --model $M/$m --device cuda --dtype f32 --tol 1e-4 --text "$T"
  $py tests/reference/check_forward.py --npp $B/npp --model $M/$m --device cuda --dtype f16 --tol 0.05 --text "$T"
  $py tests/reference/check_forward.py --npp $B/npp --model $M/$m --device cuda --dtype bf16 --tol 0.25 --text "$T"
done

step "path patching on cuda vs hooks on the CPU reference"
NPP_DEVICE=cuda $py tests/reference/check_patching.py --npp $B/npp --model $M/tiny
NPP_DEVICE=cuda $py tests/reference/check_full_split.py --npp $B/npp --model $M/small

step "forward benchmark, GPT-2-small shape, 32 tokens: npp vs PyTorch eager on cuda"
ids=$($B/npp tokenize --model $M/small --json "When Mary and John went to the store, John gave a drink to Mary. Then the quick brown fox jumped over the lazy dog again and again, said the" | tr -d '[] \n')
for dt in f32 bf16; do
  $B/npp forward --model $M/small --device cuda --dtype $dt --ids "$ids" --repeat 100 --top-k 1 2>&1 >/dev/null | sed "s/^/npp $dt: /"
done
$py bench/forward/torch_eager.py --model $M/small --ids "$ids" --device cuda --repeat 100

step "load: nppd on cuda:0, 32 clients"
for w in 1 4; do
  $B/nppd --model small=$M/small --device cuda:0 --listen 127.0.0.1:18500 --workers $w \
    --queue-max 10000 --max-inflight 10000 --max-conn-per-ip 200 2>"$out/nppd-$w.log" &
  pid=$!
  for _ in $(seq 300); do curl -sf http://127.0.0.1:18500/readyz >/dev/null && break; sleep 0.2; done
  for mode in cached uncached; do
    echo -n "workers $w: "
    $py bench/load/client.py --url http://127.0.0.1:18500 --clients 32 --seconds 10 --mode $mode --tokens 32
  done
  kill -TERM $pid
  wait $pid
  echo "nppd exit $?"
done
echo; echo "=== gpu-check done ($(date +%T))"
