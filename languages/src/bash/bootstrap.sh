# Spindle's bash bootstrap: the rcfile of an interactive bash (see docs/child-protocol.md).
#
# The host writes each cell to $SPINDLE_RUNDIR/cell.sh and types one short line on the PTY,
# built by languages/src/bash/mod.rs:
#     { __sp_begin $'<id>' e [ue] [al]; } 2>/dev/null; . "$__sp_dir/cell.sh"; { __sp_guard; } 2>/dev/null
# Queries are the same with `q` and `__sp_query <kind>` reading $SPINDLE_RUNDIR/query.
# PROMPT_COMMAND (__sp_prompt) runs after every command line, interrupted or not: it records $?,
# syncs and sends `done`.
#
# The event FIFO, the stderr FIFO and the terminal are opened by path for each write instead of
# being held open: nothing is left for children to inherit, and the host keeps its own writers
# on the FIFOs, so it never sees end-of-file in between. Everything here is named __sp_* except
# the display helpers.

__sp_dir=$SPINDLE_RUNDIR
__sp_evtpath=$SPINDLE_EVT
__sp_errpath=$SPINDLE_ERR
__sp_nonce=$SPINDLE_NONCE
# Protocol internals stay out of the children's environment (the nonce would let them forge
# sentinels).
export -n SPINDLE_RUNDIR SPINDLE_EVT SPINDLE_ERR SPINDLE_REQ SPINDLE_NONCE
__sp_cell=$__sp_dir/cell.sh
__sp_seqfile=$__sp_dir/seq
printf '0' >|"$__sp_seqfile"
__sp_last=0
__sp_n=0
__spindle_id=
__sp_kind=
__sp_ue=
__sp_dbg=

# A plain prompt-less shell: no history, no mail checks, no `!` expansion.
set +o history +H
unset HISTFILE MAILCHECK PROMPT_DIRTRIM
PS1=''
PS2=''
PS0=''
PS4='+ '

# Frames carry byte lengths, so measure in the C locale.
__sp_len() {
	local LC_ALL=C
	__sp_l=${#1}
}

# Next sentinel number. The counter lives in a file so that subshells (`display x | cat`) keep
# counting up with the shell instead of reusing numbers.
__sp_next() {
	local n=0
	{ IFS= read -r n <"$__sp_seqfile"; } 2>/dev/null || :
	case $n in '' | *[!0-9]*) n=0 ;; esac
	__sp_n=$((n + 1))
	{ printf '%s' "$__sp_n" >|"$__sp_seqfile"; } 2>/dev/null || :
}

# Write a sentinel to the terminal and to stderr.
__sp_sync() {
	__sp_next
	local s=$'\e]5151;'"$__sp_nonce;$__sp_n"$'\a'
	{ printf '%s' "$s" >/dev/tty; } 2>/dev/null || :
	{ printf '%s' "$s" >"$__sp_errpath"; } 2>/dev/null || :
}

# Write one frame: kind, sync, payload.
__sp_frame() {
	__sp_len "$3"
	{ printf '%s %s %s\n%s' "$1" "$2" "$__sp_l" "$3" >"$__sp_evtpath"; } 2>/dev/null || :
}

# Sync, then send a message.
__sp_msg() {
	__sp_sync
	__sp_frame m "$__sp_n" "$1"
}

__sp_ctl_from=()
__sp_ctl_to=()
for __sp_i in 1 2 3 4 5 6 7 8 11 12 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31; do
	printf -v __sp_c '%03o' "$__sp_i"
	printf -v __sp_c "\\$__sp_c"
	__sp_ctl_from+=("$__sp_c")
	printf -v __sp_c '\\u%04x' "$__sp_i"
	__sp_ctl_to+=("$__sp_c")
done
unset __sp_i __sp_c

# JSON string literal of $1 into __sp_j. Bash's ${s//a/b} turns quadratic on big strings, so
# those go through awk.
__sp_json() {
	local LC_ALL=C s=$1 i
	if ((${#s} > 65536)); then
		__sp_j=$(printf '%s' "$s" | __sp_json_awk)
		return 0
	fi
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\n'/\\n}
	s=${s//$'\r'/\\r}
	s=${s//$'\t'/\\t}
	if [[ $s == *[[:cntrl:]]* ]]; then
		for ((i = 0; i < ${#__sp_ctl_from[@]}; i++)); do
			s=${s//"${__sp_ctl_from[i]}"/"${__sp_ctl_to[i]}"}
		done
	fi
	__sp_j=\"$s\"
}

# JSON string literal of stdin, on stdout. Lines are joined with \n; a final newline is dropped.
# gsub replacements follow POSIX: `&` is the match, `\\` one backslash.
__sp_json_awk() {
	LC_ALL=C awk '
		BEGIN { for (i = 1; i < 32; i++) ctl[sprintf("%c", i)] = sprintf("\\u%04x", i); printf "\"" }
		{
			gsub(/\\/, "&&"); gsub(/"/, "\\\\&"); gsub(/\t/, "\\\\t"); gsub(/\r/, "\\\\r")
			if ($0 ~ /[\001-\037]/) {
				out = ""
				for (k = 1; k <= length($0); k++) { c = substr($0, k, 1); out = out ((c in ctl) ? ctl[c] : c) }
				$0 = out
			}
			printf "%s%s", (NR > 1 ? "\\n" : ""), $0
		}
		END { printf "\"" }'
}

# Start of a request line: remember the id, kind and options, and give back the $? of the last
# cell so that `echo $?` in the next cell sees it.
__sp_begin() {
	__spindle_id=$1
	__sp_kind=$2
	__sp_ue=${3-}
	__sp_dbg=${4-}
	if [[ $__sp_dbg ]]; then
		# Sourced files only run the DEBUG trap under functrace.
		__sp_dbg=T
		__sp_al_last=
		[[ $- == *T* ]] && __sp_dbg=keepT
		set -T
	fi
	# Under `set -e` a non-zero return here would end the shell.
	[[ $- == *e* ]] && return 0
	return "$__sp_last"
}

# DEBUG trap body for active_lines: report the line of top-level commands of cell.sh.
__sp_active() {
	# Several commands on one line (or a one-line loop) report it once.
	[[ $1 == "$__sp_al_last" ]] && return 0
	__sp_al_last=$1
	__sp_msg "{\"type\":\"active_line\",\"line\":$1}"
}
__sp_dbg_trap='[[ ${BASH_SOURCE[0]-} == "$__sp_cell" && ${#FUNCNAME[@]} == 0 ]] && __sp_active "$LINENO"'

# user_expressions: ue.sh defines __sp_ue_keys (JSON-encoded names) and __sp_ue_code. Each runs
# in a subshell; its stdout is the text/plain value.
__sp_user_expressions() {
	local i out rc err parts=()
	__sp_ue_keys=()
	__sp_ue_code=()
	. "$__sp_dir/ue.sh"
	for ((i = 0; i < ${#__sp_ue_keys[@]}; i++)); do
		out=$(eval "${__sp_ue_code[i]}" 2>|"$__sp_dir/ue.err" </dev/null)
		rc=$?
		if ((rc == 0)); then
			__sp_json "$out"
			parts+=("${__sp_ue_keys[i]}:{\"status\":\"ok\",\"data\":{\"text/plain\":$__sp_j},\"metadata\":{}}")
		else
			err=
			{ IFS= read -r -d '' err <"$__sp_dir/ue.err"; } 2>/dev/null || :
			err=${err%$'\n'}
			__sp_json "exit status $rc${err:+: $err}"
			parts+=("${__sp_ue_keys[i]}:{\"status\":\"error\",\"ename\":\"ExitStatus\",\"evalue\":$__sp_j,\"traceback\":[]}")
		fi
	done
	local IFS=,
	__sp_ue_json="{${parts[*]}}"
}

# Hold SIGINT off, keeping the session's own INT trap (if any) to put back. The trap is kept in
# a file rather than a $(...) capture, which would cost a fork per cell.
__sp_inttrap=$__sp_dir/int.trap
__sp_int_hold() {
	{ trap -p INT >|"$__sp_inttrap"; } 2>/dev/null || :
	trap '' INT
}
__sp_int_release() {
	local t=
	{ IFS= read -r -d '' t <"$__sp_inttrap"; } 2>/dev/null || :
	if [[ $t ]]; then
		eval "$t"
	else
		trap - INT
	fi
}

# PROMPT_COMMAND: runs after every command line.
__sp_prompt() {
	local st=$? opts=$-
	if [[ $__sp_dbg ]]; then
		trap - DEBUG
		[[ $__sp_dbg == keepT ]] || set +T
		__sp_dbg=
	fi
	set +eux
	# A prompt would be printed on the terminal after `done`: keep it empty.
	PS1=
	PS2=
	if [[ -z $__spindle_id ]]; then
		[[ $opts == *u* ]] && set -u
		[[ $opts == *x* ]] && set -x
		if [[ $opts == *e* ]]; then
			set -e
			return 0
		fi
		return "$st"
	fi
	# A second SIGINT (an interrupt pressed twice) would abort this function halfway; bash then
	# runs PROMPT_COMMAND again at the next prompt. So the request stays set until `done` is out,
	# and SIGINT is held off while messages go out: a half-written sync and frame would leave the
	# host waiting.
	local id=$__spindle_id kind=$__sp_kind ue=$__sp_ue status=ok extra=
	__sp_int_hold
	if [[ $kind == q ]]; then
		st=$__sp_last
	else
		__sp_last=$st
		if ((st == 130)); then
			# 130 = 128 + SIGINT: the line was interrupted (or a child died of SIGINT).
			status=interrupted
			__sp_msg '{"type":"error","ename":"Interrupted","evalue":"interrupted by SIGINT","traceback":[]}'
		elif ((st != 0)); then
			status=error
		elif [[ $ue ]]; then
			# User code: it can be interrupted, and the rerun then reports the interrupt.
			__sp_int_release
			__sp_user_expressions
			__sp_int_hold
			extra=",\"user_expressions\":$__sp_ue_json"
		fi
	fi
	# Typed input that no program read must not become the next command line: drop it.
	while read -r -t 0 <&0 2>/dev/null; do
		read -r -t 0.01 -N 65536 __sp_junk <&0 2>/dev/null || break
	done
	unset __sp_junk
	__sp_json "$id"
	local exit_status=$st
	[[ $kind == q ]] && exit_status=0
	__sp_msg "{\"type\":\"done\",\"id\":$__sp_j,\"status\":\"$status\",\"exit_status\":$exit_status$extra}"
	__spindle_id=
	__sp_kind=
	__sp_ue=
	__sp_int_release
	[[ $opts == *u* ]] && set -u
	[[ $opts == *x* ]] && set -x
	if [[ $opts == *e* ]]; then
		set -e
		return 0
	fi
	return "$st"
}
# The group's redirection keeps a user's `set -x` from tracing our internals.
PROMPT_COMMAND='{ __sp_prompt; } 2>/dev/null'

# ---- display helpers -------------------------------------------------------------------------

# MIME type of a path by its extension, into __sp_mime.
__sp_mime_of() {
	local ext=${1##*/}
	ext=${ext##*.}
	[[ $ext == "${1##*/}" ]] && ext=
	case ${ext,,} in
		png) __sp_mime=image/png ;;
		jpg | jpeg) __sp_mime=image/jpeg ;;
		gif) __sp_mime=image/gif ;;
		webp) __sp_mime=image/webp ;;
		svg) __sp_mime=image/svg+xml ;;
		html | htm) __sp_mime=text/html ;;
		md | markdown) __sp_mime=text/markdown ;;
		json) __sp_mime=application/json ;;
		txt | log) __sp_mime=text/plain ;;
		csv) __sp_mime=text/csv ;;
		tsv) __sp_mime=text/tab-separated-values ;;
		pdf) __sp_mime=application/pdf ;;
		tex) __sp_mime=text/x-latex ;;
		*) __sp_mime= ;;
	esac
}

# Absolute form of a path, into __sp_abs (without resolving symlinks, no subprocess).
__sp_abspath() {
	case $1 in
		/*) __sp_abs=$1 ;;
		*) __sp_abs=${PWD%/}/${1#./} ;;
	esac
}

# display FILE [MIME]: show an image, SVG, HTML, Markdown or JSON file inline.
display() {
	local f=${1-} mime=${2-} data name
	if [[ -z $f ]]; then
		echo 'usage: display FILE [MIME]   (png jpg gif webp svg html md json)' >&2
		return 2
	fi
	if [[ ! -f $f || ! -r $f ]]; then
		echo "display: $f: no such readable file" >&2
		return 1
	fi
	if [[ -z $mime ]]; then
		__sp_mime_of "$f"
		mime=$__sp_mime
	fi
	__sp_json "${f##*/}"
	name=$__sp_j
	case $mime in
		image/png | image/jpeg | image/gif | image/webp)
			data=$(base64 -w0 <"$f" 2>/dev/null) || data=$(base64 <"$f" | tr -d '\n')
			__sp_len "$data"
			if ((__sp_l > 16000000)); then
				echo "display: $f is too large to show inline; sent as a file" >&2
				display_file "$f" "$mime"
				return
			fi
			data=\"$data\"
			;;
		application/json | *+json)
			# A JSON value, sent as written.
			data=
			{ IFS= read -r -d '' data <"$f"; } 2>/dev/null || :
			[[ -n ${data//[[:space:]]/} ]] || data=null
			;;
		image/svg+xml | text/*)
			if [[ $(wc -c <"$f") -gt 65536 ]]; then
				data=$(__sp_json_awk <"$f")
			else
				data=
				{ IFS= read -r -d '' data <"$f"; } 2>/dev/null || :
				__sp_json "$data"
				data=$__sp_j
			fi
			;;
		'')
			echo "display: $f: unknown type; give a MIME type or use display_file" >&2
			return 2
			;;
		*)
			echo "display: $mime cannot be shown inline; use display_file" >&2
			return 2
			;;
	esac
	local plain=
	[[ $mime == text/plain ]] || plain=",\"text/plain\":$name"
	__sp_msg "{\"type\":\"display\",\"data\":{\"$mime\":$data$plain},\"metadata\":{},\"display_id\":null,\"update\":false}"
}

# display_html STRING: show HTML given as a string.
display_html() {
	__sp_json "${1-}"
	__sp_msg "{\"type\":\"display\",\"data\":{\"text/html\":$__sp_j,\"text/plain\":\"<HTML>\"},\"metadata\":{},\"display_id\":null,\"update\":false}"
}

# clear_output [--wait]: clear what this execution has shown so far (with --wait, when the next
# output arrives).
clear_output() {
	local wait=false
	[[ ${1-} == --wait ]] && wait=true
	__sp_msg "{\"type\":\"clear_output\",\"wait\":$wait}"
}

# display_file PATH [MIME]: report a file the code produced.
display_file() {
	local f=${1-} mime=${2-}
	if [[ -z $f ]]; then
		echo 'usage: display_file PATH [MIME]' >&2
		return 2
	fi
	if [[ ! -e $f ]]; then
		echo "display_file: $f: no such file" >&2
		return 1
	fi
	if [[ -z $mime ]]; then
		__sp_mime_of "$f"
		mime=${__sp_mime:-application/octet-stream}
	fi
	__sp_abspath "$f"
	__sp_json "$__sp_abs"
	local path=$__sp_j
	__sp_json "$mime"
	__sp_msg "{\"type\":\"file\",\"path\":$path,\"mime\":$__sp_j}"
}

# ---- queries ---------------------------------------------------------------------------------

# Answer a query whose input is in $__sp_dir/query, with an `r` frame the host parses.
__sp_query() {
	local q= out= rc=0 opts=$-
	set +eu
	{ IFS= read -r -d '' q <"$__sp_dir/query"; } 2>/dev/null
	case $1 in
		complete)
			# First line: the mode (c commands, f files, v variables); the rest: the prefix.
			local mode=${q%%$'\n'*} prefix= m
			[[ $q == *$'\n'* ]] && prefix=${q#*$'\n'}
			case $mode in
				c) out=$(compgen -c -- "$prefix" 2>/dev/null) ;;
				v) out=$(compgen -v -- "$prefix" 2>/dev/null) ;;
				*)
					local d
					while IFS= read -r m; do
						d=$m
						[[ $d == '~/'* ]] && d=$HOME/${d#'~/'}
						[[ -d $d ]] && m+=/
						out+=$m$'\n'
					done < <(compgen -f -- "$prefix" 2>/dev/null)
					;;
			esac
			;;
		is_complete)
			out=$(BASH_ENV= LC_ALL=C "$BASH" --norc -O extglob -n "$__sp_dir/query" 2>&1 </dev/null)
			rc=$?
			out="$rc"$'\n'"$out"
			;;
		inspect)
			# First line: detail level; the rest: the word.
			local detail=${q%%$'\n'*} w= t lines=12
			[[ $q == *$'\n'* ]] && w=${q#*$'\n'}
			[[ $detail == 0 ]] || lines=200
			t=$(type -t -- "$w" 2>/dev/null | head -n 1)
			if [[ -z $w || -z $t ]]; then
				out=0
			else
				out="1"$'\n'"$(type -a -- "$w" 2>&1 | head -n "$lines")"
				case $t in
					builtin | keyword)
						out+=$'\n\n'"$(help -- "$w" 2>&1 | head -n "$lines")"
						;;
					file)
						local h
						if command -v timeout >/dev/null 2>&1; then
							h=$(timeout 2 "$w" --help </dev/null 2>&1 | head -n "$lines")
						else
							h=$("$w" --help </dev/null 2>&1 | head -n "$lines")
						fi
						[[ -n $h ]] && out+=$'\n\n'"$h"
						;;
				esac
			fi
			;;
	esac
	__sp_frame r "$__sp_n" "$out"
	[[ $opts == *e* ]] && set -e
	[[ $opts == *u* ]] && set -u
	return 0
}

# After a cell: put our PROMPT_COMMAND back in front if the cell replaced it (sourcing a
# bashrc, say), since without it no `done` would ever come. Keeps $?.
__sp_guard() {
	local st=$?
	case ${PROMPT_COMMAND-} in
		*__sp_prompt*) ;;
		*) PROMPT_COMMAND="{ __sp_prompt; } 2>/dev/null${PROMPT_COMMAND:+; $PROMPT_COMMAND}" ;;
	esac
	# Under `set -e` a failing status here would end the shell, where the cell's own status
	# (say, of `false && x`) did not.
	[[ $- == *e* ]] && return 0
	return "$st"
}

__sp_msg "{\"type\":\"ready\",\"language_version\":\"${BASH_VERSION%%[(-]*}\",\"pid\":$$}"
