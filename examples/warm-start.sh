#!/bin/sh
# Warm start for CI (docs/ci.md): boot the snapvmm test guest once, wait for
# its ready marker, save the snapshot "ready" into a qcow2 image, then start
# JOBS guests from that snapshot with `snapvmm run --loadvm ready`, each on
# its own copy of the image (snapvmm has no backing files, so a copy is the
# overlay: jobs never share writes). Each job types COMMAND at the guest's
# shell and collects its exit status over the serial console.
#
#   examples/warm-start.sh            # 3 jobs of `uname -r`
#   JOBS=10 COMMAND='make -C /src test' examples/warm-start.sh
#
# Environment (defaults in brackets):
#   SNAPVMM  the snapvmm binary [build/snapvmm, else snapvmm on PATH]
#   KERNEL   the guest kernel [build/guest/bzImage]
#   INITRD   its initramfs [build/guest/initramfs.cpio]
#   MEMORY   guest RAM [256M]          CPUS  vCPUs [1]
#   JOBS     guests started from the snapshot [3]
#   COMMAND  typed at each guest's shell, with JOB=n set [uname -r]
#   WORK     directory for images and consoles [a new temporary one, removed]
#   TIMEOUT  seconds a boot or a command may take [600]
# It prints one line per job, then cold boot vs warm start: the time from
# starting snapvmm to the first command's answer, and their ratio. Exit
# status: 0 when every job's COMMAND exited 0, 1 when one did not, 2 when
# the recipe itself failed. POSIX sh (busybox ash runs it).
set -eu

SNAPVMM=${SNAPVMM:-}
if [ -z "$SNAPVMM" ]; then
	if [ -x build/snapvmm ]; then SNAPVMM=build/snapvmm; else SNAPVMM=snapvmm; fi
fi
KERNEL=${KERNEL:-build/guest/bzImage}
INITRD=${INITRD:-build/guest/initramfs.cpio}
MEMORY=${MEMORY:-256M}
CPUS=${CPUS:-1}
JOBS=${JOBS:-3}
COMMAND=${COMMAND:-uname -r}
TIMEOUT=${TIMEOUT:-600}
READY="SNAPVMM-GUEST-READY"

die() {
	echo "warm-start: $*" >&2
	exit 2
}
for f in "$KERNEL" "$INITRD"; do
	[ -f "$f" ] || die "$f is missing (make guest)"
done
command -v "$SNAPVMM" >/dev/null || die "$SNAPVMM not found (make build, or set SNAPVMM)"

if [ -z "${WORK:-}" ]; then
	WORK=$(mktemp -d)
	trap 'stop_vm; rm -rf "$WORK"' EXIT
else
	mkdir -p "$WORK"
	trap 'stop_vm' EXIT
fi
trap 'exit 2' INT TERM

# now_ms: milliseconds since boot (/proc/uptime: busybox date has no %N).
now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

pid=
# start_vm NAME ARGS...: snapvmm with its serial console on a FIFO (keys,
# through fd 3) and a file (NAME.out); its log goes to NAME.log.
start_vm() {
	name=$1
	shift
	rm -f "$WORK/$name.in"
	mkfifo "$WORK/$name.in"
	"$SNAPVMM" run --kernel "$KERNEL" --initrd "$INITRD" --append "console=ttyS0 reboot=k panic=-1" \
		--memory "$MEMORY" --cpus "$CPUS" --serial stdio --log-level warn "$@" \
		<"$WORK/$name.in" >"$WORK/$name.out" 2>"$WORK/$name.log" &
	pid=$!
	exec 3>"$WORK/$name.in"
	out=$WORK/$name.out
}

# stop_vm: quit the running snapvmm with Ctrl-a x, as a person would.
stop_vm() {
	[ -n "$pid" ] || return 0
	(printf "\001x" >&3) 2>/dev/null || true # snapvmm may have ended: a SIGPIPE ends only the subshell
	wait "$pid" 2>/dev/null || true
	exec 3>&-
	pid=
}

# wait_for PATTERN: wait until the console matches the grep -E pattern.
wait_for() {
	deadline=$(($(now_ms) + TIMEOUT * 1000))
	until grep -qE "$1" "$out"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			cat "$WORK"/*.log >&2
			die "snapvmm ended before its console showed '$1'"
		fi
		[ "$(now_ms)" -lt "$deadline" ] || die "no '$1' on the console after ${TIMEOUT}s"
		sleep 0.05
	done
}

# wait_running: wait until the monitor on NAME.sock says the guest runs:
# keys typed before --loadvm has restored it would be lost.
wait_running() {
	deadline=$(($(now_ms) + TIMEOUT * 1000))
	until "$SNAPVMM" qmp --qmp "$WORK/$name.sock" '{"execute":"query-status"}' 2>/dev/null | grep -q '"status":"running"'; do
		kill -0 "$pid" 2>/dev/null || die "snapvmm ended before the guest ran: $(cat "$WORK/$name.log")"
		[ "$(now_ms)" -lt "$deadline" ] || die "the guest does not run after ${TIMEOUT}s"
		sleep 0.05
	done
}

# run_job N: type COMMAND with JOB=N and set rc to its exit status (the
# typed line is echoed with a literal $?, the answer with a number).
run_job() {
	printf 'JOB=%s; %s; echo "__rc=$?__"\n' "$1" "$COMMAND" >&3
	wait_for '__rc=[0-9]+__'
	rc=$(grep -oE '__rc=[0-9]+__' "$out" | head -n 1 | tr -dc 0-9)
	answer=$(sed -n '/__rc=\$?__/,/__rc=[0-9]*__/p' "$out" | sed '1d;$d' | tr -d '\r' | tail -n 1)
}

# Cold boot, once: to the ready marker, one command, then the snapshot.
"$SNAPVMM" img create -f qcow2 "$WORK/ready.qcow2" 64M >/dev/null
t0=$(now_ms)
start_vm cold --drive "file=$WORK/ready.qcow2,node-name=disk0" --qmp "unix:$WORK/cold.sock"
wait_for "$READY"
run_job 0
cold_ms=$(($(now_ms) - t0))
echo "cold: booted and answered in $((cold_ms / 1000)).$(printf %03d $((cold_ms % 1000))) s: exit $rc: $answer"
echo "cold: saving snapshot ready"
"$SNAPVMM" snapshot save --qmp "$WORK/cold.sock" --tag ready >"$WORK/save.log" 2>&1 ||
	{ cat "$WORK/save.log" >&2; die "snapshot save failed"; }
stop_vm

# Warm starts: each job on its own copy of the image, from the snapshot.
failed=0
warm=
for i in $(seq "$JOBS"); do
	t0=$(now_ms)
	cp "$WORK/ready.qcow2" "$WORK/job$i.qcow2"
	start_vm "job$i" --drive "file=$WORK/job$i.qcow2,node-name=disk0" --qmp "unix:$WORK/job$i.sock" --loadvm ready
	wait_running
	run_job "$i"
	ms=$(($(now_ms) - t0))
	stop_vm
	rm -f "$WORK/job$i.qcow2"
	warm="$warm $ms"
	[ "$rc" = 0 ] || failed=$((failed + 1))
	echo "job $i: copied, restored and answered in $((ms / 1000)).$(printf %03d $((ms % 1000))) s: exit $rc: $answer"
done

median=$(echo "$warm" | tr " " "\n" | sort -n | grep . | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
awk -v c="$cold_ms" -v w="$median" -v n="$JOBS" 'BEGIN {
	printf "warm-start: start to first answer: cold boot %.2f s, warm start %.2f s (median of %d): %.1fx faster\n",
		c / 1000, w / 1000, n, (w > 0 ? c / w : 0)
}'
[ "$failed" = 0 ] || { echo "warm-start: $failed of $JOBS jobs' commands failed"; exit 1; }
