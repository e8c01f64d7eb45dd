# Spindle's guardian (see guardian.rs). Run by /bin/sh in a session of its own, with stdin the read
# end of a pipe whose write end only the host holds, stdout and stderr on /dev/null, and no other
# descriptor. The host writes "+SID" when a local session starts and "-SID" when it has been
# swept. End-of-file means the host is gone, however it ended: every process whose session id is
# still registered is killed, pass after pass until none is left, and the guardian exits.
# Builtins only (read, kill, case, set): nothing to install, no process per pass.
trap '' HUP INT PIPE
sids=' '
while read -r line; do
	sid=${line#?}
	case $sid in '' | *[!0-9]*) continue ;; esac
	case $line in
	+*) sids="$sids$sid " ;;
	-*)
		case $sids in *" $sid "*) sids="${sids%%" $sid "*} ${sids#*" $sid "}" ;; esac
		;;
	esac
done
[ "$sids" = ' ' ] && exit 0
# A process that forks while a pass runs is caught by the next one; a bounded number of passes,
# so a process the kill cannot reach (another user's, one stuck in the kernel) cannot keep the
# guardian spinning for ever.
passes=0
while [ $passes -lt 500 ]; do
	passes=$((passes + 1))
	found=
	for stat in /proc/[0-9]*/stat; do
		# Vanished since the glob: skip. Fields after the command name (which may hold spaces and
		# parentheses, hence the longest match): state ppid pgrp session ...
		read -r st 2>/dev/null <"$stat" || continue
		set -- ${st##*) }
		case $1 in Z | X) continue ;; esac
		case $sids in *" $4 "*)
			kill -9 "${st%% *}" 2>/dev/null && found=1
			;;
		esac
	done
	[ -z "$found" ] && exit 0
done
exit 0
