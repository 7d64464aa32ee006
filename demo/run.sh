#!/usr/bin/env bash
# The local demo (`make demo`): a real Kubernetes control plane (tests/envtest), the Connect
# simulator seeded with tests/fixtures/sim/demo.yaml, and the operator as a process. It applies
# config/samples into namespace "demo", shows the Secrets and the OnePasswordItems, changes an
# item in "1Password", and shows the Secrets follow and the Deployment roll. Then it cleans up.
#
# Usage: bash demo/run.sh
# Env:   DEMO_KEEP=1   leave everything running and print how to use it
#        DEMO_POLL=5   POLLING_INTERVAL of the operator, in seconds
#        DEMO_NODE=1   also run a real node (tests/envtest/node/start; needs root, builds about
#                      6 min once): the sample Deployment's pods run (busybox, printing the
#                      password they read) instead of staying Pending, and the demo shows the
#                      restarted pod reading the new password
# Needs: Rust (cargo), Go (the first run builds the control plane, ~7 min), openssl, curl,
#        util-linux (setsid). No Docker, no cluster.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

POLL="${DEMO_POLL:-5}"
KEEP="${DEMO_KEEP:-0}"
NODE="${DEMO_NODE:-0}"
NS=demo
TOKEN=demo-token
started=$SECONDS

if [[ -t 1 ]]; then
	bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
	bold() { printf '\n== %s\n' "$*"; }
fi
say() { printf '   %s\n' "$*"; }
die() {
	printf '\ndemo: ERROR: %s\n' "$*" >&2
	exit 1
}
for tool in cargo go openssl curl setsid; do
	command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not on PATH"
done
[[ "$NODE" != 1 || "$(id -u)" == 0 ]] || die "DEMO_NODE=1 needs root (the node uses namespaces, mounts and containerd)"

STATE="$(mktemp -d "${TMPDIR:-/tmp}/opsync-demo.XXXXXX")"
SIM_PID=
OPERATOR_PID=

# Stops what this script started (by pid), the control plane, and removes the state.
cleanup() {
	local status=$?
	trap - EXIT INT TERM
	if [[ "$KEEP" == 1 && $status == 0 ]]; then
		return 0
	fi
	if [[ $status != 0 && -s "$STATE/operator.log" ]]; then
		echo "--- last lines of the operator log ($STATE/operator.log):" >&2
		tail -n 30 "$STATE/operator.log" >&2
	fi
	bold "cleaning up"
	for pid in "$OPERATOR_PID" "$SIM_PID"; do
		if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
	done
	for pid in "$OPERATOR_PID" "$SIM_PID"; do
		[[ -n "$pid" ]] || continue
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$pid" 2>/dev/null || true
	done
	tests/envtest/stop "$STATE" >/dev/null 2>&1 || echo "demo: stopping the control plane in $STATE failed" >&2
	rm -rf "$STATE"
	say "stopped the operator, the simulator and the control plane; removed $STATE"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until <seconds> <what> <command...>: runs the command every half second until it succeeds.
wait_until() {
	local timeout="$1" what="$2" deadline=$((SECONDS + $1))
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
		sleep 0.5
	done
}

free_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 12000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	die "no free TCP port"
}

bold "building the operator and the Connect simulator"
t=$SECONDS
cargo build --locked -p onepassword-secrets-operator --bin onepassword-operator \
	-p connect-sim --bin connect-sim 2>&1 | tail -n 1
TARGET="$(cargo metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
BIN="${TARGET:-${CARGO_TARGET_DIR:-target}}/debug"
[[ -x "$BIN/onepassword-operator" && -x "$BIN/connect-sim" ]] || die "no binaries in $BIN"
say "built in $((SECONDS - t))s"

if [[ "$NODE" == 1 ]]; then
	bold "starting a Kubernetes control plane and a node (containerd, runc, kubelet, kube-proxy, kube-scheduler)"
	start=(tests/envtest/node/start --with-control-plane "$STATE")
else
	bold "starting a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)"
	start=(tests/envtest/start "$STATE")
fi
t=$SECONDS
"${start[@]}" >/dev/null 2>"$STATE.start.log" || {
	cat "$STATE.start.log" >&2
	rm -f "$STATE.start.log"
	die "${start[*]} failed"
}
rm -f "$STATE.start.log"
# shellcheck source=/dev/null
. "$STATE/env"
if [[ "$NODE" == 1 ]]; then
	# shellcheck source=/dev/null
	. "$STATE/node/env"
fi
export KUBECONFIG
kubectl() { "$ENVTEST_BIN_DIR/kubectl" --request-timeout=30s "$@"; }
say "API server $APISERVER_URL, ready in $((SECONDS - t))s (state in $STATE)"

bold "starting the Connect simulator (tests/fixtures/sim/demo.yaml)"
setsid "$BIN/connect-sim" --seed tests/fixtures/sim/demo.yaml --listen 127.0.0.1:0 --print-url \
	>"$STATE/connect-sim.url" 2>"$STATE/connect-sim.log" </dev/null &
SIM_PID=$!
wait_until 20 "the simulator's URL" test -s "$STATE/connect-sim.url"
CONNECT="$(head -n 1 "$STATE/connect-sim.url")"
wait_until 20 "the simulator" curl -fsS "$CONNECT/heartbeat"
say "Connect at $CONNECT (token $TOKEN; vaults Demo and Staging)"

bold "installing the CRD"
kubectl apply --server-side -f crds/onepassworditem.yaml | sed 's/^/   /'
kubectl wait --for=condition=Established --timeout=60s crd/onepassworditems.onepassword.com >/dev/null

bold "starting the operator (POLLING_INTERVAL=$POLL, AUTO_RESTART=true)"
METRICS_PORT="$(free_port)"
env -i PATH="$PATH" HOME="$HOME" KUBECONFIG="$KUBECONFIG" \
	OP_CONNECT_HOST="$CONNECT" OP_CONNECT_TOKEN="$TOKEN" \
	POLLING_INTERVAL="$POLL" AUTO_RESTART=true \
	METRICS_BIND_ADDRESS="127.0.0.1:$METRICS_PORT" HEALTH_PROBE_BIND_ADDRESS="127.0.0.1:$METRICS_PORT" \
	setsid "$BIN/onepassword-operator" >"$STATE/operator.log" 2>&1 </dev/null &
OPERATOR_PID=$!
wait_until 30 "the operator to be ready" curl -fsS "http://127.0.0.1:$METRICS_PORT/readyz"
say "ready; metrics at http://127.0.0.1:$METRICS_PORT/metrics, log in $STATE/operator.log"

bold "applying config/samples into namespace $NS"
kubectl create namespace "$NS" >/dev/null
kubectl apply -k config/samples -n "$NS" | sed 's/^/   /'
if [[ "$NODE" == 1 ]]; then
	# No registry here: the sample's nginx becomes the node's busybox, which prints what it read.
	kubectl patch deployment web -n "$NS" --type=json -p "[
		{\"op\": \"replace\", \"path\": \"/spec/template/spec/containers/0/image\", \"value\": \"$ENVTEST_BUSYBOX_IMAGE\"},
		{\"op\": \"add\", \"path\": \"/spec/template/spec/containers/0/imagePullPolicy\", \"value\": \"Never\"},
		{\"op\": \"add\", \"path\": \"/spec/template/spec/terminationGracePeriodSeconds\", \"value\": 1},
		{\"op\": \"add\", \"path\": \"/spec/template/spec/containers/0/command\",
		 \"value\": [\"sh\", \"-c\", \"echo \\\"web started with password=\$password\\\"; exec sleep 1000000\"]}]" |
		sed 's/^/   /'
	kubectl rollout status deployment/web -n "$NS" --timeout=120s | sed 's/^/   /' ||
		die "the sample Deployment did not roll out on the node"
	say "$(kubectl logs -n "$NS" deployment/web 2>/dev/null)"
fi
t=$SECONDS
kubectl wait --for=condition=Ready --timeout=60s -n "$NS" onepassworditem --all >/dev/null ||
	die "the OnePasswordItems did not become Ready"
wait_until 60 "Secret web-db (for the annotated Deployment)" kubectl get secret web-db -n "$NS"
say "synced in $((SECONDS - t))s"

bold "kubectl get onepassworditems -n $NS"
kubectl get opi -n "$NS" | sed 's/^/   /'
bold "kubectl get secrets -n $NS -l operator.1password.io/managed-by"
kubectl get secrets -n "$NS" -l operator.1password.io/managed-by | sed 's/^/   /'

# show_secret <name>: its keys, values masked except the password (made up: the demo changes it).
show_secret() {
	say "Secret $1:"
	# shellcheck disable=SC2016 # a Go template, not a shell expansion
	kubectl get secret "$1" -n "$NS" \
		-o go-template='{{range $k, $v := .data}}{{$k}}{{"\t"}}{{$v | base64decode}}{{"\n"}}{{end}}' |
		while IFS=$'\t' read -r key value; do
			if [[ "$key" == password ]]; then
				printf '     %-20s %s\n' "$key" "$value"
			else
				printf '     %-20s %s\n' "$key" "****** (${#value} bytes)"
			fi
		done
}
bold "the Secrets' data (values masked, except the password the demo changes)"
for s in db-credentials web-db registry-pull; do show_secret "$s"; done

# The restart controller records the Secrets a workload uses before it restarts it on a change.
wait_until 60 "Deployment web to be watched" \
	bash -c "'$ENVTEST_BIN_DIR/kubectl' get deployment web -n $NS -o jsonpath='{.metadata.annotations.operator\.1password\.io/secret-digests}' | grep -q web-db"
old_rs="$(kubectl get rs -n "$NS" -l app=web -o name | wc -l)"

bold "changing the password of item Demo/db in \"1Password\" (POST $CONNECT/__sim/items/set-field)"
NEW_PASSWORD="rotated-$(date +%H%M%S)"
curl -fsS -X POST "$CONNECT/__sim/items/set-field" -H 'content-type: application/json' \
	-d "{\"vault\":\"Demo\",\"item\":\"db\",\"label\":\"password\",\"value\":\"$NEW_PASSWORD\"}" | sed 's/^/   /'
echo
t=$SECONDS
secret_has_new_password() {
	[[ "$(kubectl get secret "$1" -n "$NS" -o go-template='{{.data.password | base64decode}}')" == "$NEW_PASSWORD" ]]
}
wait_until $((POLL * 4 + 30)) "Secret db-credentials to change" secret_has_new_password db-credentials
wait_until 30 "Secret web-db to change" secret_has_new_password web-db
say "both Secrets updated $((SECONDS - t))s after the change (polling every ${POLL}s)"
show_secret db-credentials
show_secret web-db
kubectl get opi -n "$NS" -o custom-columns='NAME:.metadata.name,READY:.status.conditions[0].status,REASON:.status.conditions[0].reason,ITEM VERSION:.status.itemVersion' | sed 's/^/   /'

bold "the Deployment rolls, once"
wait_until 60 "Deployment web to restart" \
	bash -c "'$ENVTEST_BIN_DIR/kubectl' get deployment web -n $NS -o jsonpath='{.spec.template.metadata.annotations}' | grep -q restarted-for"
wait_until 60 "a new ReplicaSet for web" \
	bash -c "(( \$('$ENVTEST_BIN_DIR/kubectl' get rs -n $NS -l app=web -o name | wc -l) > $old_rs ))"
say "pod template annotation operator.1password.io/restarted-for = $(kubectl get deployment web -n "$NS" -o jsonpath='{.spec.template.metadata.annotations.operator\.1password\.io/restarted-for}')"
if [[ "$NODE" == 1 ]]; then
	kubectl rollout status deployment/web -n "$NS" --timeout=120s | sed 's/^/   /' ||
		die "the restarted Deployment did not roll out on the node"
	say "kubectl get replicasets,pods -n $NS -l app=web"
	kubectl get rs,pods -n "$NS" -l app=web | sed 's/^/     /'
	wait_until 60 "the new pod to log the new password" \
		bash -c "'$ENVTEST_BIN_DIR/kubectl' logs -n $NS deployment/web | grep -qF 'password=$NEW_PASSWORD'"
	say "the new pod: $(kubectl logs -n "$NS" deployment/web 2>/dev/null)"
else
	say "kubectl get replicasets -n $NS -l app=web (pods stay Pending: this control plane has no nodes; DEMO_NODE=1 runs them)"
	kubectl get rs -n "$NS" -l app=web | sed 's/^/     /'
fi
say "events:"
kubectl get events -n "$NS" --field-selector reason=Restarted \
	-o custom-columns='OBJECT:.involvedObject.kind,NAME:.involvedObject.name,REASON:.reason,MESSAGE:.message' | sed 's/^/     /'

bold "what it cost"
curl -fsS "$CONNECT/__sim/counts" | sed 's/^/   Connect requests: /'
echo
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" |
	grep -E '^[a-z_]*(secret_writes|workload_restarts|poll_cycles)_total' | sed 's/^/   /' || true
say "total demo time: $((SECONDS - started))s"

if [[ "$KEEP" == 1 ]]; then
	cat >"$STATE/stop" <<EOF
#!/usr/bin/env bash
# Stops the demo started by demo/run.sh with DEMO_KEEP=1.
kill -TERM $OPERATOR_PID $SIM_PID 2>/dev/null
sleep 2
kill -KILL $OPERATOR_PID $SIM_PID 2>/dev/null
"$ROOT/tests/envtest/stop" "$STATE"
rm -rf "$STATE"
echo "demo stopped"
EOF
	chmod +x "$STATE/stop"
	bold "still running (DEMO_KEEP=1)"
	cat <<EOF
   export KUBECONFIG=$KUBECONFIG
   export PATH=$ENVTEST_BIN_DIR:\$PATH   # kubectl and helm
   kubectl get opi,secrets,deployments,replicasets -n $NS
   curl -X POST $CONNECT/__sim/items/set-field -H 'content-type: application/json' \\
     -d '{"vault":"Demo","item":"payments-api","label":"credential","value":"new-key"}'
   curl $CONNECT/__sim/counts                 # Connect requests so far
   curl http://127.0.0.1:$METRICS_PORT/metrics
   tail -f $STATE/operator.log
   Stop everything: bash $STATE/stop
EOF
fi
