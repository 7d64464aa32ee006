# Shortcuts; each target says what it runs.
.PHONY: help test demo crds lint

help:
	@echo "make test   bash tests/run: unit, simulator and end-to-end tests (builds a local control plane once)"
	@echo "make demo   bash demo/run.sh: a local control plane, the Connect simulator and the operator, end to end"
	@echo "            (DEMO_KEEP=1 leaves it running; DEMO_NODE=1 adds a real node, so pods run: needs root)"
	@echo "make crds   regenerate the CRD into crds/, config/crd/bases/ and the Helm chart's templates/crd.yaml"
	@echo "make lint   cargo fmt --check and clippy with warnings as errors"

test:
	bash tests/run

demo:
	bash demo/run.sh

CRD_COPIES = crds/onepassworditem.yaml config/crd/bases/onepassworditem.yaml
CHART_CRD = charts/onepassword-secrets-operator/templates/crd.yaml

# Each file is written whole or not at all: a failed crdgen leaves the old ones.
crds:
	tmp=$$(mktemp) && helm=$$(mktemp) \
	  && cargo run --quiet --locked -p onepassword-secrets-operator --bin crdgen > $$tmp \
	  && cargo run --quiet --locked -p onepassword-secrets-operator --bin crdgen -- --helm > $$helm \
	  && for f in $(CRD_COPIES); do cp $$tmp $$f; done && cp $$helm $(CHART_CRD); \
	  status=$$?; rm -f $$tmp $$helm; exit $$status

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
