#!/usr/bin/env bash
# The three throughputs (core, native API, Jupyter), the Jupyter round trip and idle memory, for
# one or more Spindle builds, in one sitting, rounds interleaved so that a change in the machine's
# load hits every build alike.
#
# Usage: bench/edges_side_by_side.sh NAME=SPINDLE_BINARY:CORE_BENCH_BINARY ... [ROUNDS]
#   e.g. bench/edges_side_by_side.sh before=/tmp/old/spindle:/tmp/old/core \
#            after=target/release/spindle:target/release/deps/core-<hash> 3
#   CORE_BENCH_BINARY is what `cargo bench -p spindle-languages --bench core --no-run` prints.
# Env:  VENV (default .venv), OUT (default bench/results/edges-<date>)
#
# Per round and build: the core bench (python only: 20 MB stdout, round trip), bench/native_bench.py
# (20 MiB to one client, round trip), and shared/bench/kernel_bench.py on spindle-python
# (start-up, idle RSS, round trip, 20 MB stdout). Raw output in OUT; a summary table at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
harness=$(cd "$root/../shared/bench" 2>/dev/null && pwd)/kernel_bench.py
[[ -f $harness ]] || { echo "kernel_bench.py not found next to the repo (../shared/bench)" >&2; exit 2; }
venv=${VENV:-$root/.venv}
py=$venv/bin/python
builds=()
rounds=2
for a in "$@"; do
	if [[ $a == *=* ]]; then builds+=("$a"); else rounds=$a; fi
done
((${#builds[@]})) || { echo "give at least one NAME=SPINDLE:CORE" >&2; exit 2; }
out=${OUT:-$root/bench/results/edges-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

# The same start for every binary's page cache. How much of a binary's code an idle kernel
# has mapped depends on it: a file just written (a fresh build or copy) sits in the page cache
# in large folios, and a fault then maps more of it (4 MB of code instead of 2 for the same
# binary). Written back and dropped, every binary is read from disk alike, as an installed one is.
for b in "${builds[@]}"; do
	rest=${b#*=}
	for f in "${rest%%:*}" "${rest#*:}"; do
		sync "$f"
		dd if="$f" iflag=nocache count=0 status=none
	done
done

for ((r = 1; r <= rounds; r++)); do
	for b in "${builds[@]}"; do
		name=${b%%=*}
		rest=${b#*=}
		bin=${rest%%:*}
		core=${rest#*:}
		echo "== round $r: $name" >&2
		(cd "$root/languages" && "$core" python) >"$out/$name.core.$r.txt" 2>&1
		SPINDLE_BIN=$bin "$py" "$root/bench/native_bench.py" >"$out/$name.native.$r.txt" 2>&1
		prefix=$(mktemp -d /tmp/spindle-edges.XXXXXX)
		"$bin" --python "$py" kernel install --prefix "$prefix" >/dev/null
		JUPYTER_PATH=$prefix/share/jupyter XDG_DATA_HOME=$prefix/xdg \
			"$py" "$harness" --kernel spindle-python --lang python --repeat 1 \
			--only startup,rss,rtt,stream --out "$out/$name.jupyter.$r.json" >/dev/null 2>&1
		rm -rf "$prefix"
	done
done

# Raw output names no local directories: the repository's own path and the temporary prefixes go.
sed -i -E "s|$out|<out>|g; s|$root/||g; s|/tmp/spindle-edges\.[A-Za-z0-9]+|<prefix>|g" "$out"/*
for b in "${builds[@]}"; do
	name=${b%%=*}
	rest=${b#*=}
	sed -i "s|${rest%%:*}|<$name>/spindle|g; s|${rest#*:}|<$name>/core|g" "$out"/*
done

"$py" - "$out" "${builds[@]}" <<'PY'
import json, pathlib, re, statistics, sys
out = pathlib.Path(sys.argv[1])
names = [b.split("=", 1)[0] for b in sys.argv[2:]]
def med(xs):
    return statistics.median(xs) if xs else float("nan")
rows = {}
for n in names:
    core_mb, core_rtt, nat_mb, nat_tf, nat_rtt, j = [], [], [], [], [], {}
    for f in sorted(out.glob(f"{n}.core.*.txt")):
        t = f.read_text()
        if m := re.search(r"rtt median\s+([\d.]+) ms", t): core_rtt.append(float(m[1]))
        if m := re.search(r"20 MB stdout\s+([\d.]+) MB/s", t): core_mb.append(float(m[1]))
    for f in sorted(out.glob(f"{n}.native.*.txt")):
        t = f.read_text()
        if m := re.search(r"round trip \(python `pass`\): median ([\d.]+) ms", t): nat_rtt.append(float(m[1]))
        if m := re.search(r"streaming 20 MiB to one client: median ([\d.]+) MB/s", t): nat_mb.append(float(m[1]))
        if m := re.search(r"streaming 20 MiB to one client with text_frames: median ([\d.]+) MB/s", t): nat_tf.append(float(m[1]))
    for f in sorted(out.glob(f"{n}.jupyter.*.json")):
        s = json.loads(f.read_text())["summary"]
        for k in ("stream_mb_s", "exec_rtt_ms_median", "rss_mb", "pss_mb", "startup_s"):
            if k in s: j.setdefault(k, []).extend(s[k]["runs"])
    rows[n] = dict(core=med(core_mb), core_rtt=med(core_rtt), native=med(nat_mb), native_tf=med(nat_tf), native_rtt=med(nat_rtt),
                   jup=med(j.get("stream_mb_s", [])), jup_rtt=med(j.get("exec_rtt_ms_median", [])),
                   rss=med(j.get("rss_mb", [])), pss=med(j.get("pss_mb", [])), start=med(j.get("startup_s", [])))
print("| | " + " | ".join(names) + " |")
print("|---|" + "---|" * len(names))
def line(label, key, fmt):
    print(f"| {label} | " + " | ".join(fmt.format(rows[n][key]) for n in names) + " |")
line("core: 20 MB Python stdout, MB/s", "core", "{:.0f}")
line("native API: 20 MiB to one client, MB/s", "native", "{:.0f}")
print("| native / core | " + " | ".join(f"{rows[n]['native'] / rows[n]['core']:.0%}" for n in names) + " |")
line("native API, `text_frames`: 20 MiB to one client, MB/s", "native_tf", "{:.0f}")
print("| native `text_frames` / core | " + " | ".join(f"{rows[n]['native_tf'] / rows[n]['core']:.0%}" for n in names) + " |")
line("Jupyter: 20 MB stdout to a client, MB/s", "jup", "{:.0f}")
print("| Jupyter / core | " + " | ".join(f"{rows[n]['jup'] / rows[n]['core']:.0%}" for n in names) + " |")
line("core round trip, ms", "core_rtt", "{:.3f}")
line("native round trip, ms", "native_rtt", "{:.3f}")
line("Jupyter round trip (jupyter_client), median ms", "jup_rtt", "{:.3f}")
line("idle RSS, host + child, MB", "rss", "{:.2f}")
line("idle PSS, host + child, MB", "pss", "{:.2f}")
line("start → first kernel_info reply, s", "start", "{:.3f}")
print(f"\nraw output: {out}")
PY
