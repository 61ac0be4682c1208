# Sourced by the GPU scripts (gpu-check.sh, gpu-bench.sh, gpu-bench-multi.sh) from the repo root:
# puts the packed build dependencies in ./.deps (scripts/pack-gpu-deps.sh) on the library path.
# The packed libcurl needs libssh2 and OpenLDAP, which a bare GPU host lacks, so nothing that
# links it (the atom binary, every suite over the engine) would link or load. Where it cannot
# load and the host has a libcurl of its own, use the host's: the packed headers declare the same
# ABI. (Checked every time: a fresh copy of .deps brings the packed one back.)
if [ -d .deps/usr ]; then
  _deps_lib="$PWD/.deps/usr/lib/x86_64-linux-gnu"
  export LD_LIBRARY_PATH="$_deps_lib:${LD_LIBRARY_PATH:-}"
  export PKG_CONFIG_PATH="$_deps_lib/pkgconfig:$PWD/.deps/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}"
  if [ -e "$_deps_lib/libcurl.so.4" ] && ldd "$_deps_lib/libcurl.so.4" | grep -q "not found" &&
     [ -e /usr/lib/x86_64-linux-gnu/libcurl.so.4 ]; then
    echo "packed libcurl cannot load here: using the host's /usr/lib/x86_64-linux-gnu/libcurl.so.4" >&2
    rm -f "$_deps_lib"/libcurl.so*
    ln -s /usr/lib/x86_64-linux-gnu/libcurl.so.4 "$_deps_lib/libcurl.so"
  fi
  unset _deps_lib
fi
