#!/usr/bin/env bash
# Side-by-side Jupyter kernel benchmark, in one sitting:
#   spindle-python vs ipykernel (kernelspec python3), spindle-bash vs bash_kernel (kernelspec bash).
#
# Usage: bench/jupyter_side_by_side.sh [REPEAT]      (REPEAT: suite repetitions, default 2)
# Env:   VENV     a venv with jupyter_client, ipykernel, bash_kernel, psutil, matplotlib
#                 (default: .venv at the repo root, as scripts/test.sh creates it)
#        OUT      directory for the JSON results (default: bench/results/jupyter-<date>)
#        ONLY     measurements for kernel_bench.py --only (default: all)
#        KERNELS  which of spindle-python, ipykernel, spindle-bash, bash_kernel to run
#                 (default: all four; e.g. "spindle-python ipykernel" for the Python pair)
#        SPINDLE_BIN  a spindle binary to use instead of building target/release/spindle
#        BASH_STREAM_BYTES  bytes for the bash stream cell (default 2000000: bash_kernel sends
#                 one message per line and needs ~10 minutes for 20 MB; Spindle gets 20 MB too)
#
# Kernelspecs go to a temporary prefix that JUPYTER_PATH points at; nothing is installed into
# the user's directories. The harness is shared/bench/kernel_bench.py (read-only). Every kernel
# runs the harness's own cells, the image cell included (IPython.display's display and Image:
# Spindle's Python session routes them to its own display), except bash_kernel's shorter stream.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
harness=$(cd "$root/../shared/bench" 2>/dev/null && pwd)/kernel_bench.py
[[ -f $harness ]] || { echo "kernel_bench.py not found next to the repo (../shared/bench)" >&2; exit 2; }
repeat=${1:-2}
venv=${VENV:-}
if [[ -z $venv ]]; then
	venv=$root/.venv
fi
py=$venv/bin/python
out=${OUT:-$root/bench/results/jupyter-$(date -u +%Y%m%dT%H%M%SZ)}
only=${ONLY:-startup,rss,rtt,stream,many_lines,image,interrupt,concurrency}
bash_bytes=${BASH_STREAM_BYTES:-2000000}
kernels=${KERNELS:-spindle-python ipykernel spindle-bash bash_kernel}
mkdir -p "$out"

spindle=${SPINDLE_BIN:-}
if [[ -z $spindle ]]; then
	echo "== build" >&2
	(cd "$root" && cargo build --release -q -p spindle)
	spindle=$root/target/release/spindle
fi

echo "== install kernelspecs into a temporary prefix" >&2
prefix=$(mktemp -d /tmp/spindle-bench-prefix.XXXXXX)
trap 'rm -rf "$prefix"' EXIT
"$py" -m pip install -q ipykernel bash_kernel >/dev/null 2>&1 || true
"$py" -m ipykernel install --prefix "$prefix" --name python3 >/dev/null
"$py" -m bash_kernel.install --prefix "$prefix" >/dev/null
"$spindle" --python "$py" kernel install --prefix "$prefix" >/dev/null
export JUPYTER_PATH=$prefix/share/jupyter
# Spindle's history store goes to a scratch dir during the run.
export XDG_DATA_HOME=$prefix/xdg
"$venv/bin/jupyter" kernelspec list >&2

cat > "$out/bash_stream.json" <<JSON
{"stream": "yes xxxxxxxxx | head -c $bash_bytes", "stream_expected": {"unit": "xxxxxxxxx\\n", "bytes": $bash_bytes}}
JSON

run() { # name kernel lang extra-args...
	local name=$1 kernel=$2 lang=$3
	shift 3
	[[ " $kernels " == *" $name "* ]] || return 0
	echo "== $name ($kernel)" >&2
	"$py" "$harness" --kernel "$kernel" --lang "$lang" --repeat "$repeat" --only "$only" \
		--out "$out/$name.json" "$@" >/dev/null
}
run spindle-python spindle-python python
run ipykernel python3 python
run spindle-bash spindle-bash bash
run bash_kernel bash bash --snippets "$out/bash_stream.json"

"$py" - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = [("startup_s", "startup, s"), ("exec_rtt_ms_median", "exec RTT median, ms"),
        ("exec_rtt_ms_p99", "exec RTT p99, ms"), ("stream_mb_s", "stream, MB/s"),
        ("stream_lost_bytes", "stream, bytes lost"), ("many_lines_s", "100k lines, s"),
        ("many_lines_msgs", "100k lines, messages"), ("image_rtt_ms", "image warm, ms"),
        ("image_cold_ms", "image cold, ms"), ("interrupt_ms", "interrupt → idle, ms"),
        ("rss_mb", "RSS idle (tree), MB"), ("pss_mb", "PSS idle (tree), MB"),
        ("concurrency_all_ready_s", "8 kernels ready, s"),
        ("concurrency_total_rss_mb", "8 kernels RSS, MB")]
names = [n for n in ["spindle-python", "ipykernel", "spindle-bash", "bash_kernel"]
         if (out / f"{n}.json").exists()]
data = {n: json.loads((out / f"{n}.json").read_text())["summary"] for n in names}
print(f"| metric | {' | '.join(names)} |")
print("|---|" + "---|" * len(names))
for key, label in rows:
    cells = []
    for n in names:
        v = data[n].get(key)
        cells.append("–" if v is None else f"{v['median']:g}")
    print(f"| {label} | {' | '.join(cells)} |")
print(f"\nraw JSON: {out}")
PY
