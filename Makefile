# Two set-up commands work on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs locedit into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.locedit-installed
# The CPU wheel of this torch release is what the machines here provide; a bare `torch` would pull
# a CUDA build of several GB. torchvision must never be installed (it breaks transformers' CLIP).
TORCH ?= torch==2.13.0

.PHONY: demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@if $(PY) -m pip show torchvision >/dev/null 2>&1; then echo "error: torchvision got installed; remove it" >&2; exit 1; fi
	touch $(STAMP)

demo: $(STAMP)
	@mkdir -p demo-out
	@if [ -d locedit/models/shapes ]; then \
		$(VENV)/bin/locedit edit examples/shapes-scene.png \
			--source "a red circle and a blue striped square on a gray background" \
			--target "a green circle and a blue striped square on a gray background" \
			--model shapes --device cpu --inversion direct --p2p replace --blend-words circle circle \
			--panel demo-out/panel.png --out demo-out/edit.png --json && \
		echo "demo: wrote demo-out/panel.png (source | edit | mask) and demo-out/edit.png"; \
	else \
		echo "demo: the bundled shapes model is not in this build; running the engine on a tiny random model (its output is noise)"; \
		$(VENV)/bin/locedit edit examples/red-square.png --source "a red square on the gray background" \
			--target "a blue square on the gray background" --model tiny-random --inversion null-text \
			--p2p refine --blend-words square square --steps 20 --panel demo-out/panel.png --out demo-out/edit.png --json && \
		echo "demo: wrote demo-out/panel.png (source | edit | mask) and demo-out/edit.png"; \
	fi

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV) demo-out
