# Two entry points (see README): `make demo` and `make test`. Both go through `make install`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTHON  ?= python3
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE := offline

.PHONY: install demo test soundfont chromium bench clean

install: $(STAMP)

# torch==2.13.0 must be in the same pip call as lightning, or pip pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" "lightning>=2.5,<3" -e ".[dev,studio]"
	-@$(MAKE) --no-print-directory soundfont
	-@$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# Optional: MuseScore_General.sf3 for WAV rendering. Everything else works without it.
soundfont:
	@if [ -f /usr/share/sounds/sf3/MuseScore_General.sf3 ]; then echo "soundfont: present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (timeout 300 apt-get install -y -q musescore-general-soundfont-small >/dev/null 2>&1 || \
	   (timeout 300 apt-get update -q >/dev/null 2>&1 && timeout 300 apt-get install -y -q musescore-general-soundfont-small >/dev/null 2>&1)) \
	  && echo "soundfont: installed" || echo "soundfont: not installed (WAV rendering disabled)"; \
	else echo "soundfont: apt not available (WAV rendering disabled)"; fi

# Optional: Debian's chromium for the studio's browser test (never a browser download).
chromium:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (timeout 600 apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (timeout 300 apt-get update -q >/dev/null 2>&1 && timeout 600 apt-get install -y -q chromium >/dev/null 2>&1)) \
	  && echo "chromium: installed" || echo "chromium: not installed (browser test skipped)"; \
	else echo "chromium: apt not available (browser test skipped)"; fi

demo: install
	$(VENV)/bin/amadeus demo --out outputs/demo

test: install
	$(VENV)/bin/pytest

bench: install
	for b in benchmarks/[!_]*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) outputs lightning_logs
