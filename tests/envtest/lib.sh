# Shared helpers for tests/envtest/{start,stop,restart-apiserver}. Sourced, not run.
# shellcheck shell=bash

# shellcheck disable=SC2034 # used by the scripts that source this file
ENVTEST_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034
ENVTEST_COMPONENTS=(controller-manager apiserver etcd) # stop order

envtest_die() { echo "envtest/${ENVTEST_CMD:-?}: ERROR: $*" >&2; exit 1; }
envtest_log() { echo "envtest/${ENVTEST_CMD:-?}: $*" >&2; }

# envtest_state_dir <arg>: absolute path of the state dir (created if needed).
envtest_state_dir() {
	[[ -n "${1:-}" ]] || envtest_die "usage: $ENVTEST_CMD <state-dir>"
	mkdir -p "$1" || envtest_die "cannot create state dir $1"
	(cd "$1" && pwd)
}

# envtest_alive <pid> <state-dir>: true if pid runs and is one of ours (its
# command line mentions the state dir); zombies count as dead.
envtest_alive() {
	local pid="$1" state="$2" st cmd="" i
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	for ((i = 0; i < 10; i++)); do
		[[ -r "/proc/$pid/stat" ]] || return 1
		st="$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null)" || return 1
		[[ "$st" != Z && "$st" != X ]] || return 1
		cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || true
		# The command line reads empty while the process execs (a run script becoming its
		# component, just after it was launched): look again rather than call it gone.
		[[ -z "$cmd" ]] || break
		sleep 0.05
	done
	[[ "$cmd" == *"$state/"* ]]
}

envtest_pid() { # <state-dir> <component>: recorded pid, or nothing
	local f="$1/$2.pid"
	[[ -f "$f" ]] && cat "$f"
	return 0
}

# envtest_stop_one <state-dir> <component> [signal]: send signal (default
# TERM), wait up to 15 s, then SIGKILL and wait.
envtest_stop_one() {
	local state="$1" name="$2" sig="${3:-TERM}" pid i
	pid="$(envtest_pid "$state" "$name")"
	if [[ -n "$pid" ]] && envtest_alive "$pid" "$state"; then
		envtest_log "stopping $name (pid $pid, SIG$sig)"
		kill -"$sig" "$pid" 2>/dev/null || true
		for ((i = 0; i < 150; i++)); do # 15 s
			envtest_alive "$pid" "$state" || break
			sleep 0.1
		done
		if envtest_alive "$pid" "$state"; then
			envtest_log "$name (pid $pid) still running 15 s after SIG$sig; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			for ((i = 0; i < 100; i++)); do
				envtest_alive "$pid" "$state" || break
				sleep 0.1
			done
			envtest_alive "$pid" "$state" && envtest_die "$name (pid $pid) survived SIGKILL"
		fi
	fi
	rm -f "$state/$name.pid"
}

# envtest_launch <state-dir> <component>: run <state-dir>/run-<component>.sh
# detached (own session, no stdio tied to the caller), record its pid.
envtest_launch() {
	local state="$1" name="$2" pid i
	rm -f "$state/$name.pid"
	setsid "$state/run-$name.sh" </dev/null >>"$state/logs/$name.log" 2>&1 &
	# The run script writes its own pid before it execs the component (see start).
	for ((i = 0; i < 100; i++)); do
		pid="$(cat "$state/$name.pid" 2>/dev/null || true)"
		[[ "$pid" =~ ^[0-9]+$ ]] && break
		sleep 0.05
	done
	[[ "$pid" =~ ^[0-9]+$ ]] || { pid=$!; echo "$pid" >"$state/$name.pid"; }
	echo "$pid"
}

envtest_tail_logs() { # <state-dir>
	local f
	for f in "$1"/logs/*.log; do
		[[ -f "$f" && "$f" != */openssl.log ]] || continue
		echo "----- last 40 lines of $f -----" >&2
		tail -n 40 "$f" >&2
	done
}

# envtest_write_env <state-dir>: (re)write <state-dir>/env from <state-dir>/env.base + pid files.
envtest_write_env() {
	local state="$1" tmp
	tmp="$(mktemp "$state/env.XXXXXX")"
	{
		cat "$state/env.base"
		printf 'export ETCD_PID=%q\n' "$(envtest_pid "$state" etcd)"
		printf 'export APISERVER_PID=%q\n' "$(envtest_pid "$state" apiserver)"
		printf 'export CONTROLLER_MANAGER_PID=%q\n' "$(envtest_pid "$state" controller-manager)"
	} >"$tmp"
	mv "$tmp" "$state/env"
}

# envtest_kubectl <state-dir> args...: kubectl against this control plane.
envtest_kubectl() {
	local state="$1"
	shift
	"$ENVTEST_BIN_DIR/kubectl" --kubeconfig="$state/kubeconfig" --request-timeout=5s "$@"
}

# envtest_wait_apiserver <state-dir> <deadline (SECONDS)>: until /readyz is ok.
envtest_wait_apiserver() {
	local state="$1" deadline="$2" pid
	pid="$(envtest_pid "$state" apiserver)"
	until [[ "$(envtest_kubectl "$state" get --raw=/readyz 2>/dev/null)" == ok ]]; do
		envtest_alive "$pid" "$state" || { envtest_log "kube-apiserver (pid $pid) exited"; return 1; }
		((SECONDS < deadline)) || { envtest_log "timed out waiting for kube-apiserver /readyz"; return 1; }
		sleep 0.5
	done
}
